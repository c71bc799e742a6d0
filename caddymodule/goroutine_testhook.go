//go:build switchback_testhooks

package caddymodule

import (
	"fmt"
	"os"
	"strings"
	"sync"
)

// This file is built only with the switchback_testhooks tag, which the
// end-to-end tests use for a binary of their own; a release build has no
// way to make a task panic.
//
// SWITCHBACK_TEST_PANIC lists tasks (comma-separated, see goroutine.go)
// that panic once, at the start of their first run.
func init() {
	list := os.Getenv("SWITCHBACK_TEST_PANIC")
	if list == "" {
		return
	}
	var mu sync.Mutex
	pending := map[string]bool{}
	for _, task := range strings.Split(list, ",") {
		pending[strings.TrimSpace(task)] = true
	}
	testPanic = func(task string) {
		mu.Lock()
		due := pending[task]
		delete(pending, task)
		mu.Unlock()
		if due {
			panic(fmt.Sprintf("test hook: forced panic in task %s", task))
		}
	}
}
