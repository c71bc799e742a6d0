package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/leanvibe/switchback/restore"
	"github.com/leanvibe/switchback/state"
)

// Exit codes of the CLI.
const (
	ExitOK               = 0
	ExitFailure          = 1
	ExitUsage            = 2
	ExitLockHeld         = 3
	ExitValidationFailed = 4
)

const exitCodesHelp = `
Exit codes: 0 ok, 1 failure, 2 usage, 3 lock held (a restore is in
progress elsewhere), 4 validation failed.`

// cliOptions are the flags every switchback command shares.
type cliOptions struct {
	address string
	config  string
	json    bool
	verbose bool
}

// AddFlags adds the shared flags.
func (o *cliOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&o.address, "address", "", "admin address of the gateway (default: the config's admin address, or localhost:2019)")
	f.StringVar(&o.config, "config", "", "config file for offline mode: work on the state store and backups directly when the gateway does not answer")
	f.BoolVar(&o.json, "json", false, "print JSON")
	f.BoolVar(&o.verbose, "verbose", false, "also print Caddy's log lines (loading and adapting the config)")
}

// cli is one run of a command.
type cli struct {
	opts   *cliOptions
	out    io.Writer
	errOut io.Writer
}

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// open picks the backend: the gateway when it answers, otherwise the
// config file's store and backups, if --config was given.
func (c *cli) open(ctx context.Context, progress func(restore.Progress)) (backend, error) {
	addr := c.opts.address
	var off *offlineBackend
	if c.opts.config != "" {
		var cfgAddr string
		var err error
		off, cfgAddr, err = loadOffline(c.opts.config, c.opts.verbose, c.errOut, progress)
		if err != nil {
			return nil, err
		}
		if addr == "" {
			addr = cfgAddr
		}
	}
	if addr == "" {
		addr = caddy.DefaultAdminListen
	}
	ab, err := newAdminBackend(addr)
	if err != nil {
		return nil, usagef("%v", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, perr := ab.Switches(pctx)
	if perr == nil || !errors.Is(perr, errUnreachable) {
		if off != nil {
			off.Close()
		}
		return ab, nil
	}
	if off != nil {
		fmt.Fprintf(c.errOut, "switchback: gateway at %s does not answer; working offline on %s\n", addr, off.app.store.Describe())
		// Finish restores a crash left half done before any command,
		// reads included, so what it shows is the recovered state.
		off.recover(ctx)
		return off, nil
	}
	return nil, fmt.Errorf("the gateway's admin API at %s does not answer (%v).\n"+
		"Start the gateway, point --address at its admin address, or pass --config FILE to work offline on the state store and backups", addr, perr)
}

// exitCode maps an error to the CLI's exit code.
func exitCode(err error) int {
	var ue usageError
	var ae *apiError
	var ce caddy.APIError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue):
		return ExitUsage
	case errors.Is(err, restore.ErrRestoreInProgress), errors.Is(err, state.ErrLockHeld):
		return ExitLockHeld
	case errors.Is(err, restore.ErrValidationFailed):
		return ExitValidationFailed
	case errors.As(err, &ae):
		return statusExit(ae.Status)
	case errors.As(err, &ce):
		return statusExit(ce.HTTPStatus)
	}
	return ExitFailure
}

func statusExit(status int) int {
	switch status {
	case http.StatusConflict:
		return ExitLockHeld
	case StatusValidationFailed:
		return ExitValidationFailed
	case http.StatusBadRequest:
		return ExitUsage
	}
	return ExitFailure
}

// run wraps a command body: it handles signals, prints errors plainly,
// and turns them into exit codes.
func run(opts *cliOptions, body func(ctx context.Context, c *cli, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		c := &cli{opts: opts, out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr()}
		err := body(ctx, c, args)
		if err == nil {
			return nil
		}
		cmd.SilenceErrors, cmd.SilenceUsage = true, true
		fmt.Fprintf(c.errOut, "%s: %v\n", cmdPath(cmd), err)
		code := exitCode(err)
		if code == ExitUsage {
			fmt.Fprintf(c.errOut, "Run '%s --help' for usage.\n", cmdPath(cmd))
		}
		return exit(cmd, code)
	}
}

// cmdPath is the command as the user typed it, under this binary's name.
func cmdPath(cmd *cobra.Command) string {
	p := cmd.CommandPath()
	if i := strings.IndexByte(p, ' '); i >= 0 {
		p = p[i:]
	} else {
		p = ""
	}
	return "switchback" + strings.Replace(p, "validate-system", "validate", 1)
}

// exit makes Caddy's Main exit with code, without logging again.
func exit(cmd *cobra.Command, code int) error {
	if code <= 1 {
		return errors.New("failed")
	}
	return caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) { return code, nil })(cmd, nil)
}

// usageErrors makes flag mistakes exit with the usage code.
func usageErrors(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		c.SilenceErrors, c.SilenceUsage = true, true
		fmt.Fprintf(c.ErrOrStderr(), "%s: %v\nRun '%s --help' for usage.\n", cmdPath(c), err, cmdPath(c))
		return exit(c, ExitUsage)
	})
}

// print writes v as JSON with --json, or calls human otherwise.
func (c *cli) print(v any, human func(w io.Writer)) {
	if c.opts.json {
		enc := json.NewEncoder(c.out)
		enc.SetIndent("", "  ")
		enc.Encode(v)
		return
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	human(tw)
	tw.Flush()
}

// isTerminal says whether progress may be drawn on stderr.
func isTerminal() bool { return term.IsTerminal(int(os.Stderr.Fd())) }

// progress returns a Progress callback that draws a bar on a terminal,
// and nil elsewhere (or with --json).
func (c *cli) progress() func(restore.Progress) {
	if c.opts.json || !isTerminal() {
		return nil
	}
	var bar *progressbar.ProgressBar
	var step string
	return func(p restore.Progress) {
		if bar == nil || p.Step != step {
			if bar != nil {
				bar.Finish()
			}
			step = p.Step
			total := p.TotalBytes
			if total <= 0 {
				total = -1
			}
			bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetDescription(step),
				progressbar.OptionShowBytes(true), progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100*time.Millisecond))
		}
		bar.Set64(p.Bytes)
	}
}

// spinner shows an indeterminate bar on a terminal while a call to the
// gateway runs, and returns a func to stop it.
func (c *cli) spinner(what string) func() {
	if c.opts.json || !isTerminal() {
		return func() {}
	}
	bar := progressbar.NewOptions(-1, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetDescription(what), progressbar.OptionClearOnFinish(), progressbar.OptionSpinnerType(14))
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				bar.Add(1)
			}
		}
	}()
	return func() { close(done); bar.Finish() }
}

func init() {
	routeValidate(os.Args)
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "traffic",
		Usage: "status|legacy|split|consolidated|reset [--weight N] [--reason R] [--switch NAME]",
		Short: "Shows or moves the traffic split between legacy and consolidated",
		Long: `Shows the switches, or moves traffic between the legacy and the
consolidated system. Without --switch, a change applies to every switch.

This replaces traffic_switchover.py. Examples:

  # Where does traffic go now?
  switchback traffic status

  # Traffic-only rollback: 100% to legacy (was: traffic_switchover.py --rollback-mode)
  switchback traffic legacy --reason "p99 over SLO after deploy"

  # Resume the migration at 30% of users on consolidated
  switchback traffic split --weight 30 --reason "fix deployed"

  # After a trip: back to the weight before it
  switchback traffic reset --reason "root cause fixed"
` + exitCodesHelp,
		CobraFunc: trafficCommand,
	})
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "point",
		Usage: "create|list|verify|cleanup",
		Short: "Creates, lists, verifies and cleans up rollback points",
		Long: `Manages rollback points: verified, content-addressed snapshots of the
paths each point type covers.

Examples, from the rollback procedures:

  # Before starting a migration
  switchback point create --type full_system --metadata '{"phase": "pre-migration", "version": "legacy"}' --tag pre-migration

  # Before a component update
  switchback point create --type partial_component --component orchestrator --metadata '{"phase": "component-update"}'

  switchback point list --limit 10
  switchback point verify rollback-20250818-143022
  switchback point cleanup --keep-count 10 --keep-days 30 --dry-run
` + exitCodesHelp,
		CobraFunc: pointCommand,
	})
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "rollback",
		Usage: "<point-id> --trigger T [--reason R] [--force] [--dry-run] [--only PATH]",
		Short: "Restores the host to a rollback point, atomically",
		Long: `Restores the paths of a rollback point: pre-checks, the fleet-wide lock,
an automatic pre-rollback point, the pre_restore hook, a staging tree per
root, fsync, an atomic swap by rename journalled in the operation record,
the post_restore hook, and validation. A crash at any instant leaves each
root either all old or all new; the next command or gateway start finishes
or reverts the operation.

Examples:

  switchback point list --type full_system
  switchback rollback rollback-20250818-143022 --trigger system_instability
  switchback rollback rollback-20250818-143022 --trigger manual --dry-run
  switchback rollback rollback-20250818-143022 --trigger manual --only ./config

  # Skip the pre-checks (integrity, disk space). Use with extreme caution.
  switchback rollback rollback-20250818-143022 --trigger manual --force
` + exitCodesHelp,
		CobraFunc: rollbackCommand,
	})
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "emergency",
		Usage: "--reason R",
		Short: "Moves all traffic to legacy and restores the last good point",
		Long: `Emergency rollback: every switch to legacy (through the gateway, or the
state store when the gateway does not answer), then a restore of the newest
verified full_system point (falling back to a partial one), then
validation. Prints the time each phase took.

  switchback emergency --reason "Performance degradation >50%"

  # The gateway is down: work on the state store and backups directly
  switchback emergency --reason "gateway crashed" --config /etc/switchback/Caddyfile
` + exitCodesHelp,
		CobraFunc: emergencyCommand,
	})
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "ops",
		Usage: "list|show|report",
		Short: "Lists and shows operation records and incident reports",
		Long: `Every create, verify, restore, emergency and cleanup writes an operation
record, to the state store and to logs/rollback-<op>.json.

  switchback ops list --limit 1
  switchback ops show op-20250818-143022
  switchback ops report op-20250818-143022 > incident.md
` + exitCodesHelp,
		CobraFunc: opsCommand,
	})
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "validate-system",
		Usage: "--level basic|standard|comprehensive",
		Short: "Checks the system after a rollback (run as: switchback validate --level L)",
		Long: `Runs the post-rollback checklist.
  basic          the configured paths exist and the validate URLs answer as expected
  standard       basic, plus the live files match the manifest restored last
  comprehensive  standard, plus a full object verify, plus error rate and latency
                 sampled from the validate URLs

  switchback validate --level basic
  watch -n 5 switchback validate --level basic
` + exitCodesHelp,
		CobraFunc: validateCommand,
	})
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "state",
		Usage: "migrate --from local PATH --to consul [--prefix P]",
		Short: "Copies switchback state between stores",
		Long: `Copies switches, rollback points and operation records from one store to
another, so a single host can grow into a fleet. It is idempotent: run it
again and it copies only what changed.

  switchback state migrate --from local ./switchback-state.db --to consul --consul-address 127.0.0.1:8500
` + exitCodesHelp,
		CobraFunc: stateCommand,
	})
}

// routeValidate sends "switchback validate --level L" to our
// validate-system command. Caddy already has a "validate" command, which
// checks a config file, and a command name can be registered only once;
// the post-rollback checklist is "switchback validate --level L" in the
// reference procedures. So a validate with --level is ours, and one
// without it stays Caddy's ("switchback validate --config FILE").
func routeValidate(args []string) {
	if len(args) < 2 || args[1] != "validate" {
		return
	}
	for _, a := range args[2:] {
		if a == "--level" || strings.HasPrefix(a, "--level=") {
			args[1] = "validate-system"
			return
		}
	}
}

// subcommand makes a child command with the shared flags.
func subcommand(parent *cobra.Command, use, short string, args cobra.PositionalArgs, body func(ctx context.Context, c *cli, args []string) error, flags func(f *pflag.FlagSet)) *cobra.Command {
	opts := new(cliOptions)
	cmd := &cobra.Command{Use: use, Short: short, Args: args, RunE: run(opts, body)}
	opts.AddFlags(cmd.Flags())
	if flags != nil {
		flags(cmd.Flags())
	}
	usageErrors(cmd)
	parent.AddCommand(cmd)
	if parent.Run == nil && parent.RunE == nil {
		// Cobra shows a parent's help, and exits 0, for a subcommand it
		// does not know: "rollout abrot" in a script would pass.
		parent.Args = cobra.ArbitraryArgs
		parent.FParseErrWhitelist.UnknownFlags = true // "abrot --reason x" is an unknown command
		parent.RunE = func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return c.Help()
			}
			var names []string
			for _, sub := range c.Commands() {
				if sub.IsAvailableCommand() {
					names = append(names, sub.Name())
				}
			}
			c.SilenceErrors, c.SilenceUsage = true, true
			fmt.Fprintf(c.ErrOrStderr(), "%s: unknown command %q: want %s\nRun '%s --help' for usage.\n", cmdPath(c), args[0], strings.Join(names, ", "), cmdPath(c))
			return exit(c, ExitUsage)
		}
	}
	return cmd
}

// exactArgs is cobra.ExactArgs with the usage exit code.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			cmd.SilenceErrors, cmd.SilenceUsage = true, true
			fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\nRun '%s --help' for usage.\n", cmdPath(cmd), what, cmdPath(cmd))
			return exit(cmd, ExitUsage)
		}
		return nil
	}
}

func trafficCommand(cmd *cobra.Command) {
	rootCommand = cmd.Root
	var weight, reason, name string
	flags := func(f *pflag.FlagSet) {
		f.StringVar(&weight, "weight", "", "percent of users sent to consolidated, 0 to 100 in steps of 0.01 (25, 0.5 or 0.5%)")
		f.StringVar(&reason, "reason", "", "why, for the record")
		f.StringVar(&name, "switch", "", "the switch to change (default: every switch)")
	}
	subcommand(cmd, "status", "Shows each switch's mode, weight and health", exactArgs(0, "status takes no arguments"), func(ctx context.Context, c *cli, _ []string) error {
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		st, err := b.Switches(ctx)
		if err != nil {
			return err
		}
		if name != "" {
			st.Switches = filterSwitches(st.Switches, name)
			if len(st.Switches) == 0 {
				return fmt.Errorf("unknown switch %q", name)
			}
		}
		c.print(st, func(w io.Writer) { printSwitches(w, st) })
		return nil
	}, flags)
	for _, mode := range []string{"legacy", "split", "consolidated", "reset"} {
		action := "mode"
		short := "Sends traffic to " + mode
		switch mode {
		case "split":
			short = "Splits traffic by weight (sticky per user)"
		case "reset":
			action, short = "reset", "Clears a trip: back to split at the weight before it"
		}
		subcommand(cmd, mode, short, exactArgs(0, mode+" takes no arguments; use --switch NAME"), func(ctx context.Context, c *cli, _ []string) error {
			req := changeRequest{Reason: reason, By: cliUser()}
			if action == "mode" {
				req.Mode = mode
			}
			if weight != "" {
				if mode != "split" {
					return usagef("--weight goes with split")
				}
				w, err := state.ParseWeight(weight)
				if err != nil {
					return usagef("--weight: %v", err)
				}
				req.Weight = json.RawMessage(w.String())
			}
			b, err := c.open(ctx, nil)
			if err != nil {
				return err
			}
			defer b.Close()
			names := []string{name}
			if name == "" {
				st, err := b.Switches(ctx)
				if err != nil {
					return err
				}
				names = names[:0]
				for _, s := range st.Switches {
					names = append(names, s.Name)
				}
				if len(names) == 0 {
					return errors.New("no switches: the config has no switchback directive")
				}
			}
			var results []SwitchStatus
			var errs []error
			for _, n := range names {
				res, err := b.ChangeSwitch(ctx, n, action, req)
				if err != nil {
					errs = append(errs, fmt.Errorf("switch %s: %w", n, err))
					continue
				}
				results = append(results, res)
			}
			c.print(results, func(w io.Writer) {
				for _, s := range results {
					fmt.Fprintf(w, "%s\tnow %s\tweight %s%%\t(%s)\n", s.Name, s.Mode, s.Weight, b.Where())
				}
			})
			return errors.Join(errs...)
		}, flags)
	}
}

func filterSwitches(in []SwitchStatus, name string) []SwitchStatus {
	var out []SwitchStatus
	for _, s := range in {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

func printSwitches(w io.Writer, st SwitchesStatus) {
	fmt.Fprintf(w, "gateway %s\tstore %s: %s\t%s\n\n", st.Gateway, st.Store.Backend, st.Store.Status, st.Store.Error)
	fmt.Fprintln(w, "SWITCH\tMODE\tWEIGHT\tLEGACY err/p99\tCONSOLIDATED err/p99\tLAST CHANGE")
	for _, s := range st.Switches {
		mode := string(s.Mode)
		if s.Tripped {
			mode += " (tripped: " + s.Rule + ")"
		}
		if s.Pending {
			mode += " [not yet in store]"
		}
		arm := func(n string) string {
			a, ok := s.Arms[n]
			if !ok {
				return "-"
			}
			return fmt.Sprintf("%.1f%% / %.0fms (n=%d)", a.ErrorRate*100, a.P99, a.Requests)
		}
		fmt.Fprintf(w, "%s\t%s\t%s%%\t%s\t%s\t%s by %s: %s\n", s.Name, mode, s.Weight, arm(armLegacy), arm(armConsolidated),
			s.Since.Local().Format(time.DateTime), s.By, s.Reason)
		if s.LegacyUnhealthy {
			fmt.Fprintf(w, "\t!! LEGACY ALSO UNHEALTHY: %s\n", s.LegacyUnhealthyReason)
		}
		if s.BothUnhealthy {
			fmt.Fprintf(w, "\t!! BOTH ARMS UNHEALTHY (relative rules hold): %s\n", s.BothUnhealthyReason)
		}
		if s.Rules != nil {
			fmt.Fprintf(w, "\ttrip: %s\n", describeRules(s.Rules))
		}
		if s.Rollout != nil {
			fmt.Fprintf(w, "\t%s\n", rolloutLine(s.Rollout))
		}
	}
}

// describeRules says which trip rules are in effect, for traffic status:
// "error_rate 5%, consecutive_failures 10, latency off (window 10s,
// min_requests 20)".
func describeRules(r *RuleStatus) string {
	if r.Off {
		return "off (watched, never trips)"
	}
	var parts []string
	rule := func(name string, on bool, val string) {
		if on {
			parts = append(parts, name+" "+val)
		} else {
			parts = append(parts, name+" off")
		}
	}
	rule("error_rate", r.ErrorRate > 0, strconv.FormatFloat(r.ErrorRate*100, 'f', -1, 64)+"%")
	rule("latency", r.LatencyQuantile > 0, "p"+strconv.FormatFloat(r.LatencyQuantile*100, 'f', -1, 64)+" "+strconv.FormatFloat(r.LatencyMS, 'f', -1, 64)+"ms")
	rule("consecutive_failures", r.ConsecutiveFailures > 0, strconv.FormatUint(r.ConsecutiveFailures, 10))
	parts = append(parts, describeRelative(r.Relative)...)
	s := strings.Join(parts, ", ") + " (window " + r.Window
	if r.MinRequests > 0 {
		s += ", min_requests " + strconv.FormatUint(r.MinRequests, 10)
	}
	return s + ")"
}

func pointCommand(cmd *cobra.Command) {
	var (
		typ, component, metadata string
		tags                     []string
		limit                    int
		all, dryRun              bool
		keepCount, keepDays      int
		verifyReq                VerifyRequest
	)
	subcommand(cmd, "create", "Creates a rollback point", exactArgs(0, "create takes no arguments; use --type"), func(ctx context.Context, c *cli, _ []string) error {
		if typ == "" {
			return usagef("--type is required: one of %s", strings.Join(restore.Types, ", "))
		}
		var meta json.RawMessage
		if metadata != "" {
			var obj map[string]any
			if err := json.Unmarshal([]byte(metadata), &obj); err != nil || obj == nil {
				return usagef("--metadata must be a JSON object, like '{\"phase\": \"pre-migration\"}': %s", strings.TrimSpace(metadata))
			}
			meta = json.RawMessage(metadata)
		}
		b, err := c.open(ctx, c.progress())
		if err != nil {
			return err
		}
		defer b.Close()
		stop := c.spinner("creating point")
		p, err := b.CreatePoint(ctx, CreatePointRequest{Type: typ, Component: component, Metadata: meta, Tags: tags, Trigger: "manual"})
		stop()
		if err != nil {
			return err
		}
		c.print(p, func(w io.Writer) { printPoints(w, []restore.Point{p}) })
		return nil
	}, func(f *pflag.FlagSet) {
		f.StringVar(&typ, "type", "", "point type: "+strings.Join(restore.Types, ", "))
		f.StringVar(&component, "component", "", "for partial_component: the component (default: all components)")
		f.StringVar(&metadata, "metadata", "", "a JSON object kept with the point")
		f.StringSliceVar(&tags, "tag", nil, "tag the point; tagged points are never cleaned up (repeatable)")
	})
	subcommand(cmd, "list", "Lists rollback points, newest first", exactArgs(0, "list takes no arguments"), func(ctx context.Context, c *cli, _ []string) error {
		if limit < 0 {
			return usagef("--limit must not be negative")
		}
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		pts, err := b.ListPoints(ctx, limit, typ)
		if err != nil {
			return err
		}
		c.print(nonNil(pts), func(w io.Writer) { printPoints(w, pts) })
		return nil
	}, func(f *pflag.FlagSet) {
		f.IntVar(&limit, "limit", 0, "show at most N points (0: all)")
		f.StringVar(&typ, "type", "", "only points of this type")
	})
	subcommand(cmd, "verify", "Re-hashes every object of a point", cobra.MaximumNArgs(1), func(ctx context.Context, c *cli, args []string) error {
		if all == (len(args) == 1) {
			return usagef("give a point id, or --all")
		}
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		stop := c.spinner("verifying")
		var reps []restore.VerifyReport
		if all {
			reps, err = b.VerifyAll(ctx, verifyReq)
		} else {
			var rep restore.VerifyReport
			rep, err = b.VerifyPoint(ctx, args[0], verifyReq)
			if rep.Point != "" {
				reps = []restore.VerifyReport{rep}
			}
		}
		stop()
		c.print(nonNil(reps), func(w io.Writer) { printVerify(w, reps) })
		return err
	}, func(f *pflag.FlagSet) {
		f.BoolVar(&all, "all", false, "verify every point")
		f.BoolVar(&verifyReq.Repair, "repair", false, "rewrite missing or corrupt objects from live files whose content matches")
	})
	subcommand(cmd, "cleanup", "Removes old points and unreferenced objects", exactArgs(0, "cleanup takes no arguments"), func(ctx context.Context, c *cli, _ []string) error {
		if keepCount < 0 || keepDays < 0 {
			return usagef("--keep-count and --keep-days must not be negative")
		}
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		rep, err := b.Cleanup(ctx, restore.CleanupOptions{KeepCount: keepCount, KeepDays: keepDays, DryRun: dryRun})
		if err != nil {
			return err
		}
		c.print(rep, func(w io.Writer) {
			verb := "removed"
			if rep.DryRun {
				verb = "would remove"
			}
			fmt.Fprintf(w, "%s %d points, kept %d; %d objects (%s) freed\n", verb, len(rep.Removed), len(rep.Kept), rep.ObjectsRemoved, humanBytes(rep.BytesFreed))
			for _, id := range rep.Removed {
				fmt.Fprintf(w, "  %s %s\n", verb, id)
			}
		})
		return nil
	}, func(f *pflag.FlagSet) {
		f.IntVar(&keepCount, "keep-count", 0, "keep the N newest points (default: the config's retention, or 10)")
		f.IntVar(&keepDays, "keep-days", 0, "keep every point younger than D days (default: the config's retention, or 30)")
		f.BoolVar(&dryRun, "dry-run", false, "only say what would be removed")
	})
}

func printPoints(w io.Writer, pts []restore.Point) {
	fmt.Fprintln(w, "ID\tTYPE\tHOST\tCREATED\tSIZE\tFILES\tTAGS\tVERIFIED\tMETADATA")
	for _, p := range pts {
		verified := "never"
		if p.LastVerified != nil {
			verified = p.LastVerified.Local().Format(time.DateTime)
			if !p.Verified {
				verified += " FAILED"
			}
		}
		typ := p.Type
		if len(p.Components) > 0 {
			typ += " (" + strings.Join(p.Components, ",") + ")"
		}
		if p.Auto != "" {
			typ += " [" + p.Auto + "]"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", p.ID, typ, p.Host, p.Created.Local().Format(time.DateTime), humanBytes(p.Size), p.Files,
			strings.Join(p.Tags, ","), verified, string(p.Metadata))
	}
}

func printVerify(w io.Writer, reps []restore.VerifyReport) {
	for _, r := range reps {
		status := "ok"
		if !r.OK {
			status = "FAILED"
		}
		fmt.Fprintf(w, "%s\t%s\t%d objects\t%s\t%.0f MB/s\n", r.Point, status, r.Objects, humanBytes(r.Bytes), r.BytesPerSecond/1e6)
		if r.ManifestError != "" {
			fmt.Fprintf(w, "\tmanifest: %s\n", r.ManifestError)
		}
		for _, p := range r.Repaired {
			from := p.Root
			if p.Path != "." {
				from += "/" + p.Path
			}
			fmt.Fprintf(w, "\trepaired %s object %.12s from %s\n", p.Kind, p.Digest, from)
		}
		for _, p := range r.Problems {
			fmt.Fprintf(w, "\t%+v\n", p)
		}
	}
}

func rollbackCommand(cmd *cobra.Command) {
	opts := new(cliOptions)
	var req RollbackRequest
	cmd.Args = exactArgs(1, "rollback takes one point id; see 'switchback point list'")
	cmd.RunE = run(opts, func(ctx context.Context, c *cli, args []string) error {
		if req.Trigger == "" {
			return usagef("--trigger is required (e.g. manual, system_instability, performance_degradation)")
		}
		b, err := c.open(ctx, c.progress())
		if err != nil {
			return err
		}
		defer b.Close()
		stop := c.spinner("restoring " + args[0])
		op, err := b.Rollback(ctx, args[0], req)
		stop()
		c.printOp(op)
		return err
	})
	opts.AddFlags(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&req.Trigger, "trigger", "", "what prompted the rollback, for the record (required)")
	f.StringVar(&req.Reason, "reason", "", "why, for the record")
	f.BoolVar(&req.Force, "force", false, "skip the pre-checks (integrity, disk space); nothing else")
	f.BoolVar(&req.DryRun, "dry-run", false, "list what would be added, removed and modified")
	f.StringSliceVar(&req.Only, "only", nil, "restore only this path of the point (repeatable)")
	f.DurationVar((*time.Duration)(&req.Wait), "wait", 0, "wait up to this long for the restore lock while another host restores (default: fail at once, exit 3)")
	usageErrors(cmd)
}

func emergencyCommand(cmd *cobra.Command) {
	opts := new(cliOptions)
	var reason string
	cmd.Args = exactArgs(0, "emergency takes no arguments; use --reason")
	cmd.RunE = run(opts, func(ctx context.Context, c *cli, _ []string) error {
		if reason == "" {
			reason = "emergency rollback"
		}
		b, err := c.open(ctx, c.progress())
		if err != nil {
			return err
		}
		defer b.Close()
		stop := c.spinner("emergency rollback")
		op, err := b.Emergency(ctx, reason, cliUser())
		stop()
		c.printOp(op)
		return err
	})
	opts.AddFlags(cmd.Flags())
	cmd.Flags().StringVar(&reason, "reason", "", "what happened, for the record")
	usageErrors(cmd)
}

// printOp prints an operation record with each step's time.
func (c *cli) printOp(op restore.Operation) {
	if op.ID == "" {
		return
	}
	c.print(op, func(w io.Writer) {
		fmt.Fprintf(w, "operation %s\t%s\t%s\n", op.ID, op.Kind, strings.ToUpper(op.Status))
		if op.Point != "" {
			fmt.Fprintf(w, "point\t%s\n", op.Point)
		}
		if op.PreRollbackPoint != "" {
			fmt.Fprintf(w, "pre-rollback point\t%s\n", op.PreRollbackPoint)
		}
		for _, s := range op.Steps {
			status := "ok"
			if s.Error != "" {
				status = "FAILED: " + s.Error
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", s.Name, time.Duration(s.Duration).Round(time.Millisecond), status, s.Detail)
		}
		if p := op.Plan; p != nil {
			fmt.Fprintf(w, "plan\t%d added, %d removed, %d modified\n", p.AddedCount, p.RemovedCount, p.ModifiedCount)
			if op.DryRun {
				for _, x := range p.Added {
					fmt.Fprintf(w, "  + %s\n", x)
				}
				for _, x := range p.Removed {
					fmt.Fprintf(w, "  - %s\n", x)
				}
				for _, x := range p.Modified {
					fmt.Fprintf(w, "  ~ %s\n", x)
				}
			}
		}
		fmt.Fprintf(w, "total\t%s\n", time.Duration(op.Duration).Round(time.Millisecond))
	})
}

func opsCommand(cmd *cobra.Command) {
	var limit int
	subcommand(cmd, "list", "Lists operation records, newest first", exactArgs(0, "list takes no arguments"), func(ctx context.Context, c *cli, _ []string) error {
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		ops, err := b.Operations(ctx, limit)
		if err != nil {
			return err
		}
		c.print(nonNil(ops), func(w io.Writer) {
			fmt.Fprintln(w, "ID\tKIND\tTRIGGER\tSTATUS\tHOST\tPOINT\tSTARTED\tDURATION")
			for _, op := range ops {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", op.ID, op.Kind, op.Trigger, op.Status, op.Host, op.Point,
					op.Started.Local().Format(time.DateTime), time.Duration(op.Duration).Round(time.Millisecond))
			}
		})
		return nil
	}, func(f *pflag.FlagSet) { f.IntVar(&limit, "limit", 20, "show at most N operations") })
	subcommand(cmd, "show", "Shows one operation record", exactArgs(1, "show takes one operation id"), func(ctx context.Context, c *cli, args []string) error {
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		op, err := b.Operation(ctx, args[0])
		if err != nil {
			return err
		}
		c.printOp(op)
		return nil
	}, nil)
	subcommand(cmd, "report", "Renders an operation's incident report in Markdown", exactArgs(1, "report takes one operation id"), func(ctx context.Context, c *cli, args []string) error {
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		md, err := b.Report(ctx, args[0])
		if err != nil {
			return err
		}
		if c.opts.json {
			c.print(map[string]string{"id": args[0], "markdown": md}, nil)
			return nil
		}
		_, err = io.WriteString(c.out, md)
		return err
	}, nil)
}

func validateCommand(cmd *cobra.Command) {
	opts := new(cliOptions)
	var level string
	cmd.Args = exactArgs(0, "validate takes no arguments; use --level")
	cmd.RunE = run(opts, func(ctx context.Context, c *cli, _ []string) error {
		switch level {
		case "basic", "standard", "comprehensive":
		default:
			return usagef("--level must be basic, standard or comprehensive, not %q", level)
		}
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		rep, err := b.Validate(ctx, level)
		c.print(rep, func(w io.Writer) {
			for _, ch := range rep.Checks {
				mark := "ok"
				if !ch.OK {
					mark = "FAIL"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\n", mark, ch.Name, ch.Detail)
			}
		})
		return err
	})
	opts.AddFlags(cmd.Flags())
	cmd.Flags().StringVar(&level, "level", "basic", "basic, standard or comprehensive")
	usageErrors(cmd)
}

func stateCommand(cmd *cobra.Command) {
	var from, to, prefix, consulAddr string
	var dryRun, asJSON bool
	migrate := &cobra.Command{
		Use:   "migrate --from local PATH --to consul [--prefix P]",
		Short: "Copies switches, points and operations from one store to another",
		Args:  cobra.ArbitraryArgs,
	}
	migrate.RunE = run(&cliOptions{}, func(ctx context.Context, c *cli, args []string) error {
		c.opts.json = asJSON
		// --from takes the backend and, for local, the path as the next word.
		if from != "local" || len(args) != 1 {
			return usagef("want --from local PATH (the bbolt file of a single host)")
		}
		if to != "consul" {
			return usagef("want --to consul")
		}
		src, err := (&App{State: &StateConfig{Backend: "local", Path: args[0]}}).openStore()
		if err != nil {
			return err
		}
		defer src.Close()
		dst, err := openConsul(&ConsulConfig{Address: consulAddr, Prefix: prefix})
		if err != nil {
			return err
		}
		defer dst.Close()
		rep, err := state.Migrate(ctx, src, dst, state.MigrateOptions{DryRun: dryRun})
		if err != nil {
			return err
		}
		c.print(rep, func(w io.Writer) {
			fmt.Fprintf(w, "%s -> %s\n%s\n", src.Describe(), dst.Describe(), rep.String())
		})
		return nil
	})
	f := migrate.Flags()
	f.StringVar(&from, "from", "", "source backend: local (followed by the file's path)")
	f.StringVar(&to, "to", "", "destination backend: consul")
	f.StringVar(&prefix, "prefix", "", "Consul KV prefix (default switchback)")
	f.StringVar(&consulAddr, "consul-address", "", "Consul HTTP address (default: CONSUL_HTTP_ADDR, then 127.0.0.1:8500); the token comes from CONSUL_HTTP_TOKEN")
	f.BoolVar(&dryRun, "dry-run", false, "only say what would be copied")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	usageErrors(migrate)
	cmd.AddCommand(migrate)
}

// humanBytes formats a byte count for people.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
