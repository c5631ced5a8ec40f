package store

import "sync"

// Sampler decides which frames become samples: every Nth OK frame per camera, plus the next frame of a
// camera after Request (an operator's "this part is good", taken whatever the verdict, since a false NG is
// the most useful sample). It only decides; the agent stores with AddSample.
type Sampler struct {
	every int
	mu    sync.Mutex
	okCnt map[string]int
	asked map[string]bool
}

// NewSampler collects every Nth OK frame; every <= 0 collects only on request.
func NewSampler(every int) *Sampler {
	return &Sampler{every: every, okCnt: map[string]int{}, asked: map[string]bool{}}
}

// Request makes the camera's next frame a sample.
func (s *Sampler) Request(camera string) {
	s.mu.Lock()
	s.asked[camera] = true
	s.mu.Unlock()
}

// Want is called once per scored frame and reports whether to store it as a sample.
func (s *Sampler) Want(camera, verdict string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.asked[camera] {
		delete(s.asked, camera)
		return true
	}
	if verdict != VerdictOK || s.every <= 0 {
		return false
	}
	s.okCnt[camera]++
	if s.okCnt[camera] >= s.every {
		s.okCnt[camera] = 0
		return true
	}
	return false
}
