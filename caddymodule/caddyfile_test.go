package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/adapt")

// adapt runs the Caddyfile adapter, as "switchback adapt" does.
func adapt(t *testing.T, src string) ([]byte, error) {
	t.Helper()
	a := caddyconfig.GetAdapter("caddyfile")
	out, _, err := a.Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
	return out, err
}

// TestAdaptGolden checks Caddyfile -> JSON for each file in
// testdata/adapt: a Caddyfile, a line of dashes, then the expected JSON,
// as Caddy's own caddyfile_adapt tests are laid out. Refresh with -update.
func TestAdaptGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			src, want, ok := strings.Cut(string(raw), "----------\n")
			if !ok {
				t.Fatalf("%s: no ---------- separator", file)
			}
			out, err := adapt(t, src)
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, out, "", "\t"); err != nil {
				t.Fatal(err)
			}
			got := pretty.String() + "\n"
			if *update {
				if err := os.WriteFile(file, []byte(src+"----------\n"+got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != want {
				t.Errorf("adapted JSON differs from %s (run with -update to accept):\n%s", file, got)
			}
		})
	}
}

// TestParseErrors feeds bad configs to the adapter: each must be refused
// with an error that names the file and line of the mistake.
func TestParseErrors(t *testing.T) {
	lineRE := regexp.MustCompile(`Caddyfile:(\d+)`)
	site := func(body string) string {
		return ":8080 {\n\tswitchback main {\n" + body + "\t\tlegacy {\n\t\t\treverse_proxy 127.0.0.1:9001\n\t\t}\n\t\tconsolidated {\n\t\t\treverse_proxy 127.0.0.1:9002\n\t\t}\n\t}\n}\n"
	}
	for _, tc := range []struct {
		name string
		src  string
		line int
		msg  string
	}{
		{"weight 101", site("\t\tweight 101\n"), 3, "between 0 and 100"},
		{"weight -1", site("\t\tweight -1\n"), 3, "between 0 and 100"},
		{"weight abc", site("\t\tweight abc\n"), 3, "number of percent"},
		{"weight 3 decimals", site("\t\tweight 0.125\n"), 3, "more than 2 decimals"},
		{"weight exponent", site("\t\tweight 1e1\n"), 3, "number of percent"},
		{"unknown mode", site("\t\tmode sideways\n"), 3, "unknown mode"},
		{"unknown subdirective", site("\t\tfrobnicate on\n"), 3, "unrecognized switchback subdirective 'frobnicate'"},
		{"duplicate weight", site("\t\tweight 1\n\t\tweight 2\n"), 4, "duplicate subdirective 'weight'"},
		{"rollout no steps", site("\t\trollout {\n\t\t\thold 1m\n\t\t}\n"), 5, "rollout needs steps"},
		{"rollout steps decrease", site("\t\trollout {\n\t\t\tsteps 5% 1%\n\t\t}\n"), 4, "steps must increase"},
		{"rollout steps equal", site("\t\trollout {\n\t\t\tsteps 5% 5\n\t\t}\n"), 4, "steps must increase"},
		{"rollout step 0", site("\t\trollout {\n\t\t\tsteps 0 5%\n\t\t}\n"), 4, "above 0%"},
		{"rollout step 101", site("\t\trollout {\n\t\t\tsteps 5% 101%\n\t\t}\n"), 4, "between 0 and 100"},
		{"rollout step decimals", site("\t\trollout {\n\t\t\tsteps 0.125%\n\t\t}\n"), 4, "more than 2 decimals"},
		{"rollout gate not a step", site("\t\trollout {\n\t\t\tsteps 5% 50%\n\t\t\tgate 20% manual\n\t\t}\n"), 6, "not one of the steps"},
		{"rollout gate first", site("\t\trollout {\n\t\t\tsteps 5% 50%\n\t\t\tgate 5% manual\n\t\t}\n"), 6, "first step"},
		{"rollout gate kind", site("\t\trollout {\n\t\t\tsteps 5% 50%\n\t\t\tgate 50% auto\n\t\t}\n"), 5, "gate <step> manual"},
		{"rollout gate twice", site("\t\trollout {\n\t\t\tsteps 5% 50%\n\t\t\tgate 50% manual\n\t\t\tgate 50 manual\n\t\t}\n"), 6, "given twice"},
		{"rollout hold bad", site("\t\trollout {\n\t\t\tsteps 5%\n\t\t\thold soon\n\t\t}\n"), 5, "invalid hold"},
		{"rollout min_requests bad", site("\t\trollout {\n\t\t\tsteps 5%\n\t\t\tmin_requests -3\n\t\t}\n"), 5, "invalid min_requests"},
		{"rollout unknown option", site("\t\trollout {\n\t\t\tsteps 5%\n\t\t\tspeed fast\n\t\t}\n"), 5, "unknown rollout option 'speed'"},
		{"rollout duplicate hold", site("\t\trollout {\n\t\t\tsteps 5%\n\t\t\thold 1m\n\t\t\thold 2m\n\t\t}\n"), 6, "duplicate rollout option 'hold'"},
		{"rollout twice", site("\t\trollout {\n\t\t\tsteps 5%\n\t\t}\n\t\trollout {\n\t\t\tsteps 5%\n\t\t}\n"), 6, "duplicate subdirective 'rollout'"},
		{"rollout bad action", site("\t\trollout {\n\t\t\tsteps 5%\n\t\t\ton_step shout loud\n\t\t}\n"), 5, "unknown action 'shout'"},
		{"sticky unknown", site("\t\tsticky ear\n"), 3, "unknown sticky source"},
		{"sticky header no name", site("\t\tsticky header\n"), 3, "header name"},
		{"error_rate 150%", site("\t\ttrip {\n\t\t\terror_rate 150%\n\t\t}\n"), 4, "error_rate"},
		{"error_rate -1%", site("\t\ttrip {\n\t\t\terror_rate -1%\n\t\t}\n"), 4, "error_rate"},
		{"quantile p0", site("\t\ttrip {\n\t\t\tlatency p0 250ms\n\t\t}\n"), 4, "quantile"},
		{"quantile p101", site("\t\ttrip {\n\t\t\tlatency p101 250ms\n\t\t}\n"), 4, "quantile"},
		{"window 0", site("\t\ttrip {\n\t\t\twindow 0s\n\t\t}\n"), 4, "window"},
		{"window negative", site("\t\ttrip {\n\t\t\twindow -1s\n\t\t}\n"), 4, "window"},
		{"min_requests -1", site("\t\ttrip {\n\t\t\tmin_requests -1\n\t\t}\n"), 4, "min_requests"},
		{"rule off and set", site("\t\ttrip {\n\t\t\terror_rate off\n\t\t\terror_rate 5%\n\t\t}\n"), 5, "duplicate trip rule 'error_rate'"},
		{"every rule off", site("\t\ttrip {\n\t\t\terror_rate off\n\t\t\tconsecutive_failures off\n\t\t}\n"), 6, "every rule is off"},
		{"off with more", site("\t\ttrip {\n\t\t\tlatency off now\n\t\t}\n"), 4, "latency"},
		{"window off", site("\t\ttrip {\n\t\t\twindow off\n\t\t}\n"), 4, "window"},
		{"relative ratio", site("\t\ttrip {\n\t\t\terror_rate two legacy\n\t\t}\n"), 4, "invalid error_rate ratio 'two'"},
		{"relative ratio below 1", site("\t\ttrip {\n\t\t\terror_rate 0.5x legacy\n\t\t}\n"), 4, "at least 1"},
		{"relative floor", site("\t\ttrip {\n\t\t\terror_rate 2x legacy floor 0%\n\t\t}\n"), 4, "invalid error_rate legacy floor '0%'"},
		{"relative floor unsafe", site("\t\ttrip {\n\t\t\terror_rate 2x legacy floor 0.1%\n\t\t}\n"), 5, "would trip on a single failure"},
		{"relative unknown option", site("\t\ttrip {\n\t\t\terror_rate 2x legacy ceiling 3%\n\t\t}\n"), 4, "unknown error_rate legacy option 'ceiling'"},
		{"relative option no value", site("\t\ttrip {\n\t\t\terror_rate 2x legacy floor\n\t\t}\n"), 4, "needs a value"},
		{"relative duplicate", site("\t\ttrip {\n\t\t\terror_rate 2x legacy\n\t\t\terror_rate 3x legacy\n\t\t}\n"), 5, "duplicate trip rule 'error_rate ... legacy'"},
		{"relative latency no ratio", site("\t\ttrip {\n\t\t\tlatency p99 legacy\n\t\t}\n"), 4, "latency relative to legacy reads"},
		{"relative latency floor", site("\t\ttrip {\n\t\t\tlatency p99 1.5x legacy floor soon\n\t\t}\n"), 4, "invalid latency legacy floor 'soon'"},
		{"relative min_requests", site("\t\ttrip {\n\t\t\terror_rate 2x legacy min_requests 0\n\t\t}\n"), 4, "min_requests '0'"},
		{"override source", site("\t\toverride query x\n"), 3, "unknown override source 'query'"},
		{"override cidr", site("\t\toverride header X trusted 10.0.0.0/99\n"), 3, "override trusted"},
		{"duplicate override", site("\t\toverride header X\n\t\toverride cookie y\n"), 4, "duplicate subdirective 'override'"},
		{"unknown rule", site("\t\ttrip {\n\t\t\tp99_vibes bad\n\t\t}\n"), 4, "unknown trip rule 'p99_vibes'"},
		{"replay bad", site("\t\treplay_to_legacy maybe\n"), 3, "on or off"},
		{"replay_max_body bad", site("\t\treplay_max_body lots\n"), 3, "replay_max_body"},
		{"replay_unsafe no matcher", site("\t\treplay_unsafe\n"), 3, "replay_unsafe needs a matcher"},
		{"replay_unsafe star", site("\t\treplay_unsafe *\n"), 3, "every request twice"},
		{"replay_unsafe not a matcher", site("\t\treplay_unsafe orders\n"), 3, "is not a matcher"},
		{"replay_unsafe unknown name", site("\t\treplay_unsafe @nope\n"), 3, "replay_unsafe '@nope'"},
		{"replay_unsafe two args", site("\t\treplay_unsafe /a /b\n"), 3, "wrong argument count"},
		{"probe arm", site("\t\tprobe sideways GET /health\n"), 3, "probe arm"},
		{"on_trip unknown", site("\t\ton_trip email ops@example.com\n"), 3, "unknown action 'email'"},
		{"on_trip webhook url", site("\t\ton_trip webhook ftp://x\n"), 3, "webhook"},
		{"empty arm", ":8080 {\n\tswitchback main {\n\t\tlegacy {\n\t\t}\n\t\tconsolidated {\n\t\t\treverse_proxy 127.0.0.1:9002\n\t\t}\n\t}\n}\n", 3, "legacy arm is empty"},
		{"missing arm", ":8080 {\n\tswitchback main {\n\t\tlegacy {\n\t\t\treverse_proxy 127.0.0.1:9001\n\t\t}\n\t}\n}\n", 6, "no consolidated arm"},
		{"no name", ":8080 {\n\tswitchback {\n\t\tweight 1\n\t}\n}\n", 2, "needs a switch name"},
		{"bad name", ":8080 {\n\tswitchback ../etc {\n\t}\n}\n", 2, "switch name"},
		{"global unknown", "{\n\tswitchback {\n\t\tfrobnicate\n\t}\n}\n", 3, "unrecognized switchback option"},
		{"global state backend", "{\n\tswitchback {\n\t\tstate etcd\n\t}\n}\n", 3, "unknown state backend 'etcd'"},
		{"global point type", "{\n\tswitchback {\n\t\tpoints {\n\t\t\tnightly ./x\n\t\t}\n\t}\n}\n", 4, "unknown point type 'nightly'"},
		{"global retention", "{\n\tswitchback {\n\t\tretention {\n\t\t\tkeep_count many\n\t\t}\n\t}\n}\n", 4, "keep_count"},
		{"global validate", "{\n\tswitchback {\n\t\tvalidate {\n\t\t\turl ftp://x 200\n\t\t}\n\t}\n}\n", 4, "validate url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := adapt(t, tc.src)
			if err == nil {
				t.Fatalf("config was accepted:\n%s", tc.src)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.msg) {
				t.Errorf("error %q does not say %q", msg, tc.msg)
			}
			m := lineRE.FindStringSubmatch(msg)
			if m == nil {
				t.Fatalf("error %q does not name the line", msg)
			}
			if m[1] != strconv.Itoa(tc.line) {
				t.Errorf("error %q names line %s, want %d", msg, m[1], tc.line)
			}
		})
	}
}

// FuzzParse feeds arbitrary switch blocks to the parser: it may refuse
// them, but must never panic.
func FuzzParse(f *testing.F) {
	f.Add("weight 20\nmode split\nsticky cookie sb_user\n")
	f.Add("trip {\nerror_rate 5%\nlatency p99 250ms\n}\n")
	f.Add("trip {\nerror_rate off\nlatency off\nconsecutive_failures 3\n}\n")
	f.Add("trip {\nconsecutive_failures off extra\n}\n")
	f.Add("probe legacy GET /health interval 2s\non_trip exec echo hi\n")
	f.Add("auto_recover {\nafter 60s\nprobe_weight 1%\n}\n")
	f.Add("replay_unsafe @orders\nreplay_unsafe /api/orders*\n")
	f.Add("replay_unsafe *\n")
	f.Add("replay_unsafe\n")
	f.Add("rollout {\nsteps 1% 5% 100%\nhold 1s\nmin_requests 10\ngate 5% manual\n}\n")
	f.Add("trip {\nerror_rate 2x legacy floor 2% min_requests 50\nlatency p99 1.5x legacy floor 20ms\nerror_rate 5%\n}\n")
	f.Add("trip {\nlatency legacy\nerror_rate legacy legacy\n}\n")
	f.Fuzz(func(t *testing.T, body string) {
		src := "switchback main {\n" + body + "\n}\n"
		d := caddyfile.NewTestDispenser(src)
		var h Handler
		_ = h.UnmarshalCaddyfile(d)
		g := caddyfile.NewTestDispenser("switchback {\n" + body + "\n}\n")
		_, _ = parseGlobal(g, nil)
	})
}

// FuzzParseRollout feeds arbitrary rollout blocks to the parser: it may
// refuse them, but must never panic, and what it accepts is a valid
// rollout (steps increasing in (0,100], gates among them).
func FuzzParseRollout(f *testing.F) {
	for _, s := range []string{
		"steps 1% 5% 25% 50% 100%\nhold 5m\nmin_requests 500\ngate 50% manual",
		"steps 0.1 1 100\nmin_requests off\non_step webhook https://x.example/h",
		"steps 5% 1%", "steps\n", "gate 5% manual\nsteps 5", "steps 0.001%", "steps 1e1", "hold 0\nsteps 1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		d := caddyfile.NewTestDispenser("switchback main {\nrollout {\n" + body + "\n}\n}\n")
		var h Handler
		if h.UnmarshalCaddyfile(d) != nil || h.Rollout == nil {
			return
		}
		if err := h.Rollout.check(); err != nil {
			t.Fatalf("accepted an invalid rollout %+v: %v", h.Rollout, err)
		}
		if err := h.Rollout.plan().Check(); err != nil {
			t.Fatalf("accepted rollout's plan is invalid: %v", err)
		}
	})
}
