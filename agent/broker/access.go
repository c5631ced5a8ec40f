package broker

import (
	"bytes"
	"crypto/subtle"
	"slices"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// User is one account of the embedded broker.
type User struct {
	Username, Password string
	// Commands this user may publish under the prefix: "threshold" (<prefix>/<camera>/threshold/set),
	// "sample" (<prefix>/<camera>/sample/set). Nothing else under the prefix: results, status, available
	// and stats are the agent's alone.
	Commands []string
}

// Access is the embedded broker's access control.
//
// WHY at the broker: MQTT 3.1.1 delivers a message without its publisher's identity, so the agent cannot
// tell who sent a threshold command; only the broker knows, at publish time. Here that broker is ours, so
// the rule is enforced where it can be: who may connect (users, anonymous), and who may publish what.
type Access struct {
	// Agent is the daemon's own account; it may publish everything. Its password is random per start.
	Agent User
	// Users are the other accounts; every connected client may subscribe to everything.
	Users []User
	// AllowAnonymous lets clients connect without a username. Anonymous clients may publish commands only
	// when there are no Users (the open, loopback-only default); otherwise they are read-only.
	AllowAnonymous bool
	// Prefix is the agent's topic prefix: writes under it are checked, writes elsewhere are free.
	Prefix string
}

// accessHook enforces Access in mochi.
type accessHook struct {
	mqtt.HookBase
	acc Access
}

func (h *accessHook) ID() string { return "vlmdiff-access" }

func (h *accessHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *accessHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	name := string(pk.Connect.Username)
	if name == "" {
		return h.acc.AllowAnonymous
	}
	u, ok := h.user(name)
	return ok && subtle.ConstantTimeCompare(pk.Connect.Password, []byte(u.Password)) == 1
}

func (h *accessHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if !write {
		return true
	}
	name := string(cl.Properties.Username)
	if name != "" && name == h.acc.Agent.Username {
		return true
	}
	rest, under := strings.CutPrefix(topic, h.acc.Prefix+"/")
	if !under && topic != h.acc.Prefix {
		return true
	}
	cmd, ok := commandOf(rest)
	if !ok {
		return false // results, status, available, stats: the agent's topics
	}
	if name == "" {
		return len(h.acc.Users) == 0
	}
	u, ok := h.user(name)
	return ok && slices.Contains(u.Commands, cmd)
}

func (h *accessHook) user(name string) (User, bool) {
	if name == h.acc.Agent.Username && name != "" {
		return h.acc.Agent, true
	}
	for _, u := range h.acc.Users {
		if u.Username == name {
			return u, true
		}
	}
	return User{}, false
}

// commandOf reports which command a topic below the prefix is: <camera>/<kind>/set with kind threshold or
// sample, the camera a single level.
func commandOf(rest string) (string, bool) {
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[2] != "set" || parts[0] == "" || bytes.ContainsAny([]byte(parts[0]), "+#") {
		return "", false
	}
	switch parts[1] {
	case "threshold", "sample":
		return parts[1], true
	}
	return "", false
}
