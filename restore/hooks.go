package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// MaxOutput is how much of a command's output RunCommand keeps.
const MaxOutput = 4 << 10

// CommandOptions describe a shell command for RunCommand.
type CommandOptions struct {
	// Command is a shell command line, run with `sh -c`.
	Command string
	// Timeout bounds the run (default 5m). The command's whole process
	// group is killed when it expires.
	Timeout time.Duration
	// Env is added to the process's environment, as KEY=value.
	Env []string
	// Dir is the working directory (default: the current one).
	Dir string
}

// RunCommand runs opts.Command with `sh -c` and returns its combined
// output, keeping the last MaxOutput bytes. It is used for the restore
// hooks and by the gateway's on_trip exec action.
func RunCommand(ctx context.Context, opts CommandOptions) (string, error) {
	if opts.Command == "" {
		return "", errors.New("empty command")
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultHookTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", opts.Command)
	cmd.Dir = opts.Dir
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	out := &tailBuffer{max: MaxOutput}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	if err != nil {
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			err = fmt.Errorf("command %q timed out after %s", opts.Command, timeout)
		case ctx.Err() != nil:
			err = ctx.Err()
		default:
			err = fmt.Errorf("command %q: %w", opts.Command, err)
		}
	}
	return out.String(), err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - b.max; over > 0 {
		b.buf.Next(over)
		b.dropped = true
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped {
		return "[...]" + b.buf.String()
	}
	return b.buf.String()
}

// runHookStep runs a configured hook as a step of op. An empty command is
// recorded as skipped.
func (m *Manager) runHookStep(ctx context.Context, op *Operation, name, command, point string) error {
	return m.step(ctx, op, name, func(s *Step) error {
		if command == "" {
			s.Detail = "no hook configured"
			return nil
		}
		out, err := RunCommand(ctx, CommandOptions{
			Command: command,
			Timeout: m.cfg.Hooks.Timeout,
			Env: []string{
				"SWITCHBACK_OP=" + op.ID,
				"SWITCHBACK_POINT=" + point,
				"SWITCHBACK_REASON=" + op.Reason,
				"SWITCHBACK_TRIGGER=" + op.Trigger,
				"SWITCHBACK_HOOK=" + name,
			},
		})
		s.Output = out
		if err != nil {
			return userErr(err, "%s hook failed: %v", name, err)
		}
		return nil
	})
}
