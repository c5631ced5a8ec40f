package agent

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"

	"github.com/vlmdiff/edge/agent/broker"
	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/mqttout"
)

// embeddedBrokerConfig maps mqtt.listen and mqtt.embedded onto the embedded broker's config. The agent gets
// an account of its own with a random password, made per start and never written anywhere, so nobody else
// can publish as the agent. Anonymous clients are allowed on loopback and refused beyond it unless
// mqtt.embedded.allow_anonymous says otherwise.
func (a *Agent) embeddedBrokerConfig() (broker.Config, error) {
	q := a.cfg.MQTT
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return broker.Config{}, fmt.Errorf("embedded broker: agent credential: %w", err)
	}
	a.embUser = &broker.User{Username: "vlmdiff-agent-" + hex.EncodeToString(secret[:4]), Password: hex.EncodeToString(secret[4:])}
	anon := config.IsLoopback(q.Listen)
	if q.Embedded.AllowAnonymous != nil {
		anon = *q.Embedded.AllowAnonymous
	}
	acc := &broker.Access{Agent: *a.embUser, AllowAnonymous: anon, Prefix: q.Prefix}
	for _, u := range q.Embedded.Users {
		acc.Users = append(acc.Users, broker.User{Username: u.Username, Password: u.Password, Commands: u.Commands})
	}
	bc := broker.Config{Addr: q.Listen, Logger: a.log, Access: acc}
	if t := q.Embedded.TLS; t.Cert != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return broker.Config{}, fmt.Errorf("embedded broker: mqtt.embedded.tls: %w", err)
		}
		bc.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if !anon && len(acc.Users) == 0 {
		a.log.Warn("embedded broker refuses anonymous clients and has no users: only the agent can connect; "+
			"add mqtt.embedded.users (docs/operations.md, Securing MQTT)", "listen", q.Listen)
	}
	return bc, nil
}

// useEmbeddedAccount makes the publisher connect to the embedded broker with the agent's own account; with
// TLS the certificate is not verified, since the agent connects to itself in-process.
func (a *Agent) useEmbeddedAccount(pc *mqttout.Config) {
	if a.embUser == nil {
		return
	}
	pc.Username, pc.Password = a.embUser.Username, a.embUser.Password
	if a.cfg.MQTT.Embedded.TLS.Cert != "" {
		pc.TLS = mqttout.TLS{InsecureSkipVerify: true}
	}
}
