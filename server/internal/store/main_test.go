package store

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// lockHelperEnv makes the test binary a second process that opens the
// state file named by the variable and reports what Open said.
const lockHelperEnv = "TCPGATE_STORE_LOCK_HELPER"

func TestMain(m *testing.M) {
	if path := os.Getenv(lockHelperEnv); path != "" {
		f, err := Open(path)
		if err != nil {
			fmt.Println(err)
			os.Exit(3)
		}
		f.Close()
		fmt.Println("opened")
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}
