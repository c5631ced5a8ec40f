package imagelimit

import (
	"bufio"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"io"
)

// HugePNGHeader returns a small, well-formed PNG prefix (signature, IHDR for an 8-bit grey w x h image, one
// tiny IDAT, IEND) whose header claims w x h pixels: the shape of the file that used to abort the daemon.
// For tests and fuzz seeds.
func HugePNGHeader(w, h uint32) []byte {
	var b []byte
	b = append(b, "\x89PNG\r\n\x1a\n"...)
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 0 // 8-bit greyscale
	b = appendChunk(b, "IHDR", ihdr)
	b = appendChunk(b, "IDAT", []byte{0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01})
	return appendChunk(b, "IEND", nil)
}

// WriteGreyPNGBomb streams a valid w x h 8-bit grey PNG of zeros to out without holding the image: a 20000 x
// 20000 one is about 400 KB of file for 400 MB of pixels. For tests.
func WriteGreyPNGBomb(out io.Writer, w, h uint32) error {
	bw := bufio.NewWriter(out)
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8] = 8
	if _, err := bw.Write(appendChunk([]byte("\x89PNG\r\n\x1a\n"), "IHDR", ihdr)); err != nil {
		return err
	}
	cw := &chunkWriter{w: bw}
	z, err := zlib.NewWriterLevel(cw, zlib.BestCompression)
	if err != nil {
		return err
	}
	row := make([]byte, 1+int(w)) // filter byte 0, then zeros
	for y := uint32(0); y < h; y++ {
		if _, err := z.Write(row); err != nil {
			return err
		}
	}
	if err := z.Close(); err != nil {
		return err
	}
	if err := cw.flush(); err != nil {
		return err
	}
	if _, err := bw.Write(appendChunk(nil, "IEND", nil)); err != nil {
		return err
	}
	return bw.Flush()
}

// chunkWriter cuts a stream into IDAT chunks of up to 64 KiB.
type chunkWriter struct {
	w   io.Writer
	buf []byte
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	c.buf = append(c.buf, p...)
	for len(c.buf) >= 1<<16 {
		if _, err := c.w.Write(appendChunk(nil, "IDAT", c.buf[:1<<16])); err != nil {
			return 0, err
		}
		c.buf = c.buf[1<<16:]
	}
	return len(p), nil
}

func (c *chunkWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.w.Write(appendChunk(nil, "IDAT", c.buf))
	c.buf = nil
	return err
}

func appendChunk(b []byte, typ string, data []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	start := len(b)
	b = append(b, typ...)
	b = append(b, data...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b[start:]))
}
