package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/leanvibe/switchback/state"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "rollout",
		Usage: "start|status|pause|resume|approve|abort|retry|promote [--switch NAME] [--reason R]",
		Short: "Shows or steers a switch's progressive rollout",
		Long: `Shows or steers the progressive rollout of a switch (its rollout block):
the weight walks through the steps while consolidated proves itself,
fleet-wide. Without --switch, the command acts on the only switch with a
rollout.

  switchback rollout start --reason "go"           # from the first step
  switchback rollout status                        # the steps, the hold, the evidence, what it waits for
  switchback rollout approve --reason "QA signed"  # pass a manual gate
  switchback rollout pause|resume                  # hold the rollout at its step, then go on
  switchback rollout abort --reason "stop"         # stop it: all traffic to legacy
  switchback rollout retry                         # again from the first step (takes a changed rollout block)
  switchback rollout promote --reason "urgent"     # jump to 100% (a reason is required)
` + exitCodesHelp,
		CobraFunc: rolloutCommand,
	})
}

func rolloutCommand(cmd *cobra.Command) {
	var reason, name string
	flags := func(f *pflag.FlagSet) {
		f.StringVar(&reason, "reason", "", "why, for the record (required by promote)")
		f.StringVar(&name, "switch", "", "the switch (default: the only switch with a rollout)")
	}
	subcommand(cmd, "status", "Shows the rollout: steps, hold, evidence and what it waits for", exactArgs(0, "status takes no arguments"), func(ctx context.Context, c *cli, _ []string) error {
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		s, err := rolloutSwitch(ctx, b, name)
		if err != nil {
			return err
		}
		c.print(s, func(w io.Writer) { printRollout(w, s, time.Now()) })
		return nil
	}, flags)
	for _, action := range rolloutActions {
		short := map[string]string{
			"start": "Starts the rollout at its first step", "pause": "Holds the rollout at its step",
			"resume": "Resumes a paused rollout", "approve": "Approves the next step's manual gate",
			"abort": "Aborts the rollout: all traffic to legacy", "retry": "Runs the rollout again from its first step",
			"promote": "Jumps to 100% (needs --reason)",
		}[action]
		subcommand(cmd, action, short, exactArgs(0, action+" takes no arguments; use --switch NAME"), func(ctx context.Context, c *cli, _ []string) error {
			if action == "promote" && strings.TrimSpace(reason) == "" {
				return usagef("promote jumps to 100%% and needs --reason")
			}
			b, err := c.open(ctx, nil)
			if err != nil {
				return err
			}
			defer b.Close()
			s, err := rolloutSwitch(ctx, b, name)
			if err != nil {
				return err
			}
			out, err := b.Rollout(ctx, s.Name, rolloutRequest{Action: action, Reason: reason, By: cliUser()})
			if err != nil {
				return err
			}
			c.print(out, func(w io.Writer) { printRollout(w, out, time.Now()) })
			return nil
		}, flags)
	}
}

// rolloutSwitch finds the switch a rollout command acts on: the named
// one, or the only one with a rollout.
func rolloutSwitch(ctx context.Context, b backend, name string) (SwitchStatus, error) {
	st, err := b.Switches(ctx)
	if err != nil {
		return SwitchStatus{}, err
	}
	var with []string
	for _, s := range st.Switches {
		if name != "" && s.Name == name {
			if s.Rollout == nil {
				return SwitchStatus{}, fmt.Errorf("switch %s has no rollout: add a rollout block to its config", name)
			}
			return s, nil
		}
		if s.Rollout != nil {
			with = append(with, s.Name)
		}
	}
	switch {
	case name != "":
		return SwitchStatus{}, fmt.Errorf("unknown switch %q", name)
	case len(with) == 0:
		return SwitchStatus{}, errors.New("no switch has a rollout: add a rollout block to a switch's config")
	case len(with) > 1:
		return SwitchStatus{}, usagef("several switches have a rollout (%s): name one with --switch", strings.Join(with, ", "))
	}
	for _, s := range st.Switches {
		if s.Name == with[0] {
			return s, nil
		}
	}
	return SwitchStatus{}, nil // not reached
}

// printRollout shows a rollout: the steps as a bar, the current step's
// hold and evidence, what it waits for, and the last decisions.
//
//	main  running  step 2/3 (5%)  since 12:03:04 (1m2s)
//	[1%]==[5%]--[100%]
//	waiting: 312/500 requests
func printRollout(w io.Writer, s SwitchStatus, now time.Time) {
	ro := s.Rollout
	if ro == nil {
		fmt.Fprintf(w, "%s\tno rollout\n", s.Name)
		return
	}
	fmt.Fprintf(w, "%s\t%s\tstep %d/%d (%s%%)", s.Name, ro.State, ro.Step+1, len(ro.Steps), ro.Weight())
	if !ro.StepStarted.IsZero() && ro.State.Active() {
		fmt.Fprintf(w, "\tsince %s (%s)", ro.StepStarted.Local().Format(time.TimeOnly), now.Sub(ro.StepStarted).Round(time.Second))
	}
	fmt.Fprintf(w, "\tweight now %s%% (%s)\n", s.Weight, s.Mode)
	fmt.Fprintln(w, rolloutBar(ro))
	fmt.Fprintf(w, "hold %s, min_requests %d", ro.Hold, ro.MinRequests)
	if len(ro.Gates) > 0 {
		gates := make([]string, len(ro.Gates))
		for i, g := range ro.Gates {
			gates[i] = g.String() + "%"
		}
		fmt.Fprintf(w, ", manual gates %s", strings.Join(gates, " "))
	}
	fmt.Fprintln(w)
	if ro.PlanChanged {
		fmt.Fprintln(w, "!! the config's rollout block changed: 'switchback rollout retry' applies it")
	}
	if ro.Waiting != "" {
		fmt.Fprintln(w, ro.Waiting)
	}
	if ev := s.RolloutEvidence; ev != nil {
		fmt.Fprintf(w, "evidence at this step (gateways %s):\n", strings.Join(ev.Gateways, ", "))
		printEvidence(w, ev)
	}
	if n := len(ro.Decisions); n > 0 {
		fmt.Fprintln(w, "decisions:")
		for _, d := range ro.Decisions[max(n-5, 0):] {
			line := fmt.Sprintf("  %s\t%s\t%s%% -> %s%%\t%s", d.At.Local().Format(time.DateTime), d.Kind, d.From, d.To, d.Reason)
			if d.Rule != "" {
				line += " [rule " + d.Rule + "]"
			}
			fmt.Fprintln(w, line)
		}
	}
}

func printEvidence(w io.Writer, ev *state.Evidence) {
	for _, arm := range []string{armLegacy, armConsolidated} {
		a := ev.Arms[arm]
		fmt.Fprintf(w, "  %s\t%d requests\t%d failed (%.2f%%)\tp50 %.1fms\tp99 %.1fms\n", arm, a.Requests, a.Failures, a.ErrorRate*100, a.P50, a.P99)
	}
	if sh := ev.Shadow; sh != nil {
		fmt.Fprintf(w, "  shadow\t%d compared\t%d mismatched (%.2f%%)\tworst %s\n", sh.Compared, sh.Mismatched, sh.MismatchRate*100, sh.WorstRoute)
	}
}

// rolloutBar draws the steps, the ones passed joined by "=", the rest by
// "-", the current one in brackets: "1%==[5%]--25%--100%".
func rolloutBar(ro *state.Rollout) string {
	var b strings.Builder
	for i, st := range ro.Steps {
		if i > 0 {
			if i <= ro.Step {
				b.WriteString("==")
			} else {
				b.WriteString("--")
			}
		}
		label := st.String() + "%"
		if gated, approved := ro.Gated(i); gated {
			if approved {
				label += "(approved)"
			} else {
				label += "(gate)"
			}
		}
		if i == ro.Step {
			label = "[" + label + "]"
		}
		b.WriteString(label)
	}
	return b.String()
}

// rolloutLine is the rollout in one line, for traffic status.
func rolloutLine(ro *state.Rollout) string {
	s := fmt.Sprintf("rollout %s, step %d/%d (%s%%): %s", ro.State, ro.Step+1, len(ro.Steps), ro.Weight(), rolloutBar(ro))
	if ro.Waiting != "" {
		s += "; " + ro.Waiting
	}
	return s
}

func (b *adminBackend) Rollout(ctx context.Context, name string, req rolloutRequest) (out SwitchStatus, err error) {
	err = b.do(ctx, http.MethodPost, "/switchback/switches/"+url.PathEscape(name)+"/rollout", req, &out)
	return
}

// Rollout steers a rollout in the store, with the gateway down: the
// record's own plan serves start and retry. The engine, its actions and
// its events run only in a gateway, so offline this only writes the
// record, which the gateways follow when they return.
func (b *offlineBackend) Rollout(ctx context.Context, name string, req rolloutRequest) (SwitchStatus, error) {
	var cerr error
	now := time.Now().UTC()
	rec, err := state.UpdateSwitch(ctx, b.app.store, name, func(cur state.Switch, exists bool) (state.Switch, bool) {
		if !exists {
			cerr = &apiError{Status: http.StatusNotFound, Msg: fmt.Sprintf("unknown switch %q in %s", name, b.app.store.Describe())}
			return cur, false
		}
		cur = cur.Copy()
		_, cerr = rolloutControl(&cur, req, nil, req.By, b.app.gateway, now)
		return cur, cerr == nil
	})
	if cerr != nil {
		return SwitchStatus{}, cerr
	}
	rec.History = nil
	return SwitchStatus{Switch: rec}, err
}
