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

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/leanvibe/switchback/state"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "override",
		Usage: "sign consolidated|legacy [--switch NAME] [--ttl 24h]",
		Short: "Makes signed tester overrides that send a request to a named arm",
		Long: `Makes a signed value for a switch's override header or cookie, which sends
a request to the named arm whatever the switch's mode and weight, from any
client address. The value names the switch and carries its expiry; it is
signed with the state store's override key, so every gateway sharing the
store honours it. Overridden requests are counted apart and never trip the
switch. See the switch's "override" subdirective.

  switchback override sign consolidated --switch main --ttl 8h
  curl -H "X-Switchback-Arm: $(switchback override sign consolidated --switch main)" https://example.com/

  # The gateway is down: sign with the state store directly
  switchback override sign consolidated --switch main --config /etc/switchback/Caddyfile
` + exitCodesHelp,
		CobraFunc: overrideCommand,
	})
}

func overrideCommand(cmd *cobra.Command) {
	var name string
	var ttl time.Duration
	subcommand(cmd, "sign consolidated|legacy", "Prints a signed override value for an arm", exactArgs(1, "sign takes the arm: consolidated or legacy"), func(ctx context.Context, c *cli, args []string) error {
		req := OverrideSignRequest{Arm: args[0], TTL: caddy.Duration(ttl)}
		if _, err := req.check(); err != nil {
			return usagef("%v", err)
		}
		b, err := c.open(ctx, nil)
		if err != nil {
			return err
		}
		defer b.Close()
		if name == "" {
			if name, err = onlySwitch(ctx, b); err != nil {
				return err
			}
		}
		var tok OverrideToken
		switch b := b.(type) {
		case *adminBackend:
			err = b.do(ctx, http.MethodPost, "/switchback/switches/"+url.PathEscape(name)+"/override/sign", req, &tok)
		case *offlineBackend:
			tok, err = b.signOverride(ctx, name, req)
		default:
			err = fmt.Errorf("cannot sign overrides through %s", b.Where())
		}
		if err != nil {
			return err
		}
		c.print(tok, func(w io.Writer) { fmt.Fprintln(w, tok.Value) })
		return nil
	}, func(f *pflag.FlagSet) {
		f.StringVar(&name, "switch", "", "the switch (default: the only one)")
		f.DurationVar(&ttl, "ttl", DefaultOverrideTTL, "how long the value is honoured, at most 720h")
	})
}

// onlySwitch returns the name of the only switch, or says to choose.
func onlySwitch(ctx context.Context, b backend) (string, error) {
	st, err := b.Switches(ctx)
	if err != nil {
		return "", err
	}
	var names []string
	for _, s := range st.Switches {
		names = append(names, s.Name)
	}
	switch len(names) {
	case 0:
		return "", errors.New("no switches: the config has no switchback directive")
	case 1:
		return names[0], nil
	}
	return "", usagef("there are %d switches (%s): choose one with --switch NAME", len(names), strings.Join(names, ", "))
}

// signOverride signs with the store's override key, for a switch the store
// knows.
func (b *offlineBackend) signOverride(ctx context.Context, name string, req OverrideSignRequest) (OverrideToken, error) {
	if _, _, err := state.GetSwitch(ctx, b.app.store, name); err != nil {
		if errors.Is(err, state.ErrNotFound) {
			return OverrideToken{}, fmt.Errorf("unknown switch %q in %s", name, b.app.store.Describe())
		}
		return OverrideToken{}, err
	}
	return b.app.signOverrideFor(ctx, name, req, time.Now())
}
