package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/config"
)

// FuzzParse: any bytes either decode or fail with a *config.Error of the
// file, whose line is within the file; decoding never panics.
func FuzzParse(f *testing.F) {
	f.Add([]byte("listeners:\n  - listenerId: a\n    port: 0\n"))
	f.Add([]byte("connections:\n  - connectionId: c\n    address: 127.0.0.1:7\nserve:\n  grpc-addr: x\n  cors-origins: [a, b]\n"))
	f.Add([]byte("listeners:\n  - listener_id: a\n    auto_reply: {rules: [{kind: MATCH_KIND_REGEX, regex: '('}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := config.Parse("f.yaml", "/etc/tcpgate", data)
		if err == nil {
			if file.Config == nil {
				t.Fatal("no error and no config")
			}
			for _, l := range file.Config.GetListeners() {
				if l.GetListenerId() == "" {
					t.Fatal("a listener without an id decoded")
				}
			}
			return
		}
		var ce *config.Error
		if !errors.As(err, &ce) {
			t.Fatalf("error %T %v is not a *config.Error", err, err)
		}
		if ce.File != "f.yaml" || ce.Line < 0 || ce.Line > strings.Count(string(data), "\n")+1 {
			t.Fatalf("error %+v out of the file's %d lines", ce, strings.Count(string(data), "\n")+1)
		}
	})
}
