package caddymodule

import (
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ourCommands are switchback's own commands, in the order help lists
// them: the daily ones first.
var ourCommands = []string{"traffic", "point", "rollback", "emergency", "ops", "validate-system", "state"}

// longDescription opens "switchback help". Caddy's own long text follows
// only in "switchback help run" and the other Caddy commands.
const longDescription = `switchback is a migration gateway: Caddy with modules that split traffic
between a legacy and a consolidated system, trip back to legacy on an SLO
breach, and restore the host to a verified rollback point.

Run the gateway with 'switchback run --config Caddyfile'. The commands
below talk to it through its admin API (--address, default localhost:2019);
with --config FILE they work on the state store and backups directly when
the gateway does not answer. 'switchback <command> --help' shows a
command's flags and examples.`

func init() {
	caddy.CustomBinaryName = "switchback"
	caddy.CustomLongDescription = longDescription
	os.Args = routeHelp(os.Args)
	// The root command exists only once caddycmd.Main builds it; an
	// initializer runs before any command does, the root's help included.
	cobra.OnInitialize(groupCommands)
}

// routeHelp sends "switchback", "switchback --help" and "switchback -h"
// to "switchback help", whose run groups the commands (see
// groupCommands): cobra prints the root's own help before any
// initializer runs.
func routeHelp(args []string) []string {
	switch {
	case len(args) == 1:
		return append(args, "help")
	case len(args) == 2 && (args[1] == "--help" || args[1] == "-h"):
		args[1] = "help"
	}
	return args
}

// examples replaces Caddy's examples in the root's help.
const examples = `  $ switchback run --config Caddyfile
  $ switchback traffic status
  $ switchback traffic legacy --reason "p99 over SLO"
  $ switchback point create --type full_system --tag pre-migration
  $ switchback emergency --reason "gateway crashed" --config Caddyfile`

// rootCommand is the root of the running command tree, found through one
// of our commands once caddycmd has built it; nil before.
var rootCommand func() *cobra.Command

// groupCommands lists our commands first in the root's help, each with its
// one-line summary, then Caddy's.
func groupCommands() {
	if rootCommand == nil {
		return
	}
	root := rootCommand()
	if root == nil || root.ContainsGroup("switchback") {
		return
	}
	root.Example = examples
	root.AddGroup(&cobra.Group{ID: "switchback", Title: "switchback commands:"}, &cobra.Group{ID: "caddy", Title: "Caddy commands (switchback is Caddy with switchback's modules):"})
	root.SetHelpCommandGroupID("caddy")
	root.SetCompletionCommandGroupID("caddy")
	cmds := root.Commands()
	// Cobra lists a group's commands in the order given; ours go in
	// ourCommands' order, Caddy's by name.
	sort.SliceStable(cmds, func(i, j int) bool {
		return commandRank(cmds[i].Name()) < commandRank(cmds[j].Name())
	})
	cobra.EnableCommandSorting = false
	for _, c := range cmds {
		if slices.Contains(ourCommands, c.Name()) {
			c.GroupID = "switchback"
		} else if c.GroupID == "" {
			c.GroupID = "caddy"
		}
	}
	root.ResetCommands()
	root.AddCommand(cmds...)
}

// commandRank orders our commands as ourCommands does, ahead of Caddy's.
func commandRank(name string) int {
	if i := slices.Index(ourCommands, name); i >= 0 {
		return i
	}
	return len(ourCommands)
}

// loadConfig reads and adapts a config file as Caddy's own commands do.
// Caddy logs each step ("using config from file", "adapted config to
// JSON") at info level on its default logger, as JSON lines when stderr
// is not a terminal. A switchback command shows them only with --verbose;
// otherwise the adapter's warnings still show, as plain lines on errOut.
func loadConfig(file string, verbose bool, errOut io.Writer) ([]byte, error) {
	if verbose {
		cfg, _, _, err := caddycmd.LoadConfig(file, "")
		return cfg, err
	}
	// BufferedLog keeps what Caddy logs; UnbufferDefaultLogger replays it
	// into a logger of our choice and leaves that logger as the default,
	// so a second round puts the original back.
	_, orig, _ := caddy.BufferedLog()
	cfg, _, _, err := caddycmd.LoadConfig(file, "")
	caddy.UnbufferDefaultLogger(zap.New(plainCore{w: errOut, level: zapcore.WarnLevel}))
	caddy.BufferedLog()
	caddy.UnbufferDefaultLogger(orig)
	return cfg, err
}

// plainCore writes log entries at or above level as plain lines for a
// person: "switchback: warning: <message> (file Caddyfile, line 3)".
type plainCore struct {
	w      io.Writer
	level  zapcore.Level
	fields []zapcore.Field
}

func (c plainCore) Enabled(l zapcore.Level) bool { return l >= c.level }

func (c plainCore) With(fields []zapcore.Field) zapcore.Core {
	c.fields = append(slices.Clip(c.fields), fields...)
	return c
}

func (c plainCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c plainCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(slices.Clip(c.fields), fields...) {
		f.AddTo(enc)
	}
	var extra []string
	for _, k := range []string{"file", "line", "error"} {
		if v, ok := enc.Fields[k]; ok && fmt.Sprint(v) != "" {
			extra = append(extra, fmt.Sprintf("%s %v", k, v))
		}
	}
	level := e.Level.String()
	if e.Level == zapcore.WarnLevel {
		level = "warning"
	}
	line := "switchback: " + level + ": " + e.Message
	if len(extra) > 0 {
		line += " (" + strings.Join(extra, ", ") + ")"
	}
	_, err := fmt.Fprintln(c.w, line)
	return err
}

func (plainCore) Sync() error { return nil }
