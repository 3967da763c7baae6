package server_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/tcpgate/tcpgate/server/servertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait in these tests; reaching it is a failure, not a
// measurement.
const wait = servertest.Wait

// payloadOf returns the bytes of an event or a reply, whichever field
// carries them: PAYLOAD_FORMAT_TEXT_OR_DATA, the default, sends valid
// UTF-8 as text and anything else as data.
func payloadOf(m interface {
	GetData() []byte
	GetText() string
}) []byte {
	if d := m.GetData(); len(d) > 0 {
		return d
	}
	return []byte(m.GetText())
}
