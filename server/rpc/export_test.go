package rpc

import (
	"log/slog"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// SentinelRows is codeOf for the external tests: each sentinel with its
// reason.
func SentinelRows() (errs []error, reasons []tcpgatev1.ErrorReason) {
	for _, m := range codeOf {
		errs = append(errs, m.err)
		reasons = append(reasons, m.reason)
	}
	return errs, reasons
}

// ToStatus is toStatus for the external tests.
func ToStatus(log *slog.Logger, err error) error { return toStatus(log, err) }
