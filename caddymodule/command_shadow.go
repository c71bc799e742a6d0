package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/leanvibe/switchback/shadow"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "shadow",
		Usage: "report|reset [--switch NAME] [--route R] [--json]",
		Short: "Shows or clears the shadow report: how the other arm's answers differ",
		Long: `A switch with a shadow block sends a copy of a share of its requests to
the arm that did not serve them and compares the answers. The report shows,
overall and per route, the pairs compared, the mismatches, and the paths
that differed, with noise (paths that differ as often between two answers
of the serving arm) marked and not counted as mismatches.

The report lives in the running gateway (it is not in the state store), so
these commands need its admin API.

Examples:

  switchback shadow report
  switchback shadow report --switch main --route "GET /items/:id"
  switchback shadow report --json
  switchback shadow reset --switch main
` + exitCodesHelp,
		CobraFunc: shadowCommand,
	})
}

func shadowCommand(cmd *cobra.Command) {
	var name, route string
	flags := func(f *pflag.FlagSet) {
		f.StringVar(&name, "switch", "", "the switch (default: every switch with a shadow block)")
	}
	subcommand(cmd, "report", "Shows the shadow report, per route", exactArgs(0, "report takes no arguments; use --switch NAME and --route R"), func(ctx context.Context, c *cli, _ []string) error {
		ab, names, err := c.shadowSwitches(ctx, name)
		if err != nil {
			return err
		}
		var reps []shadow.Report
		for _, n := range names {
			var rep shadow.Report
			err := ab.do(ctx, http.MethodGet, "/switchback/switches/"+url.PathEscape(n)+"/shadow", nil, &rep)
			var ae *apiError
			if name == "" && errors.As(err, &ae) && ae.Status == http.StatusNotFound {
				continue // no shadow block on this switch
			}
			if err != nil {
				return fmt.Errorf("switch %s: %w", n, err)
			}
			if route != "" {
				rep.Routes = filterRoutes(rep.Routes, route)
				if len(rep.Routes) == 0 {
					return usagef("switch %s has no route %q in its shadow report", n, route)
				}
			}
			reps = append(reps, rep)
		}
		if len(reps) == 0 {
			return errors.New("no switch has a shadow block")
		}
		c.print(reps, func(w io.Writer) {
			for i, rep := range reps {
				if i > 0 {
					fmt.Fprintln(w)
				}
				printShadow(w, rep, route != "")
			}
		})
		return nil
	}, func(f *pflag.FlagSet) {
		flags(f)
		f.StringVar(&route, "route", "", `show one route in detail, e.g. "GET /items/:id"`)
	})
	subcommand(cmd, "reset", "Clears the shadow report of a switch", exactArgs(0, "reset takes no arguments; use --switch NAME"), func(ctx context.Context, c *cli, _ []string) error {
		ab, names, err := c.shadowSwitches(ctx, name)
		if err != nil {
			return err
		}
		var errs []error
		for _, n := range names {
			var rep shadow.Report
			err := ab.do(ctx, http.MethodPost, "/switchback/switches/"+url.PathEscape(n)+"/shadow/reset", nil, &rep)
			var ae *apiError
			if name == "" && errors.As(err, &ae) && ae.Status == http.StatusNotFound {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("switch %s: %w", n, err))
				continue
			}
			fmt.Fprintf(c.out, "%s\tshadow report cleared\n", n)
		}
		return errors.Join(errs...)
	}, flags)
}

// shadowSwitches opens the gateway's admin API and names the switches to
// report on: the one given, or all.
func (c *cli) shadowSwitches(ctx context.Context, name string) (*adminBackend, []string, error) {
	b, err := c.open(ctx, nil)
	if err != nil {
		return nil, nil, err
	}
	ab, ok := b.(*adminBackend)
	if !ok {
		b.Close()
		return nil, nil, errors.New("the shadow report lives in the running gateway, which does not answer; it is not kept in the state store")
	}
	if name != "" {
		return ab, []string{name}, nil
	}
	st, err := ab.Switches(ctx)
	if err != nil {
		return nil, nil, err
	}
	var names []string
	for _, s := range st.Switches {
		names = append(names, s.Name)
	}
	return ab, names, nil
}

func filterRoutes(in []shadow.RouteReport, route string) []shadow.RouteReport {
	var out []shadow.RouteReport
	for _, r := range in {
		if r.Route == route {
			out = append(out, r)
		}
	}
	return out
}

// printShadow prints a report as a table; detail adds each route's paths
// and samples.
func printShadow(w io.Writer, rep shadow.Report, detail bool) {
	fmt.Fprintf(w, "switch %s\tcopies to %s\tsampled %d\tcompared %d\tmismatched %d (%s)\tnoise only %d\tskipped %d\tdropped %d\n\n",
		rep.Switch, rep.Direction, rep.Sampled, rep.Compared, rep.Mismatched, pct(rep.MismatchRate), rep.NoiseOnly, rep.Skipped, rep.Dropped)
	if len(rep.Routes) == 0 {
		fmt.Fprintln(w, "no pairs compared yet")
		return
	}
	fmt.Fprintln(w, "ROUTE\tCOMPARED\tMISMATCHED\tRATE\tPATHS")
	for _, r := range rep.Routes {
		var paths []string
		for i, p := range r.Paths {
			if i == 3 && !detail {
				paths = append(paths, fmt.Sprintf("+%d more", len(r.Paths)-3))
				break
			}
			s := fmt.Sprintf("%s %d", p.Path, p.Count)
			if p.Noise {
				s += " (noise)"
			}
			paths = append(paths, s)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\n", r.Route, r.Compared, r.Mismatched, pct(r.MismatchRate), strings.Join(paths, ", "))
	}
	if !detail {
		return
	}
	for _, r := range rep.Routes {
		for _, s := range r.Samples {
			fmt.Fprintf(w, "\nsample %s at %s: %s\n", s.Request, s.At.Format("2006-01-02T15:04:05Z07:00"), strings.Join(s.Diffs, ", "))
			fmt.Fprintf(w, "  serving\t%d\t%s\n", s.Serving.Status, s.Serving.Body)
			fmt.Fprintf(w, "  shadow\t%d\t%s\n", s.Shadow.Status, s.Shadow.Body)
		}
	}
}
