package tests

// End-to-end tests of the trip rules relative to legacy (issue 12): a
// consolidated arm failing where legacy does not trips at once under
// load; both arms failing alike trips nothing and is shown loudly.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// NewFlakyUpstream starts an upstream that answers its name with 200 and,
// once FailEvery(n) is set, a 500 to every n-th request: n=5 fails 20%.
// Its FaultWindow times the first failing answer and the last request, as
// an Upstream's does.
func NewFlakyUpstream(t testing.TB, name string) (*Upstream, func(n int64)) {
	t.Helper()
	u := &Upstream{Name: name, paths: map[string]int{}, tagged: map[string]taggedRequest{}}
	var every, count atomic.Int64
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.Hits.Add(1)
		u.arrived(time.Now())
		io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Upstream", name)
		if n := every.Load(); n > 0 && count.Add(1)%n == 0 {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, "%s failing", name)
			u.faulted()
			return
		}
		fmt.Fprint(w, name)
	}))
	t.Cleanup(u.Server.Close)
	return u, func(n int64) { u.firstFault.Store(0); every.Store(n) }
}

// webhookSink collects the JSON events POSTed to it.
type webhookSink struct {
	*httptest.Server
	mu     sync.Mutex
	events []map[string]any
}

func newWebhookSink(t *testing.T) *webhookSink {
	s := &webhookSink{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev map[string]any
		if err := json.NewDecoder(r.Body).Decode(&ev); err == nil {
			s.mu.Lock()
			s.events = append(s.events, ev)
			s.mu.Unlock()
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.Close)
	return s
}

// find returns the first event named event, if any.
func (s *webhookSink) find(event string) (map[string]any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range s.events {
		if ev["event"] == event {
			return ev, true
		}
	}
	return nil, false
}

// relativeStatus is what the tests read of a switch's relative rules.
type relativeStatus struct {
	Tripped             bool   `json:"tripped"`
	Rule                string `json:"rule"`
	Reason              string `json:"reason"`
	BothUnhealthy       bool   `json:"both_unhealthy"`
	BothUnhealthyReason string `json:"both_unhealthy_reason"`
	Rules               struct {
		Relative []struct {
			Rule    string   `json:"rule"`
			Text    string   `json:"text"`
			Current *float64 `json:"current"`
		} `json:"relative"`
	} `json:"rules"`
}

// relativeOnly turns the absolute rules off, so only the relative rule
// can trip: an absolute 5% would trip a 20% arm by itself. The window is
// the default 10s.
const relativeOnly = "trip {\n error_rate 2x legacy\n error_rate off\n consecutive_failures off\n}"

// TestRelativeRuleTripsUnderLoad: at 300 req/s, half of it on
// consolidated, consolidated failing 20% with legacy at 0% trips the
// switch by the relative rule within 1s of the first failing answer, and
// no GET fails at the client (the failures are replayed on legacy).
func TestRelativeRuleTripsUnderLoad(t *testing.T) {
	legacy := NewUpstream(t, "legacy")
	cons, failEvery := NewFlakyUpstream(t, "consolidated")
	g := StartGateway(t, GatewayConfig{Template: failoverTemplate, Legacy: legacy, Consolidated: cons,
		Extra: map[string]string{"MODE": "split", "WEIGHT": "50", "OPTIONS": relativeOnly}})
	e := &failoverEnv{g: g, legacy: legacy, consolidated: cons}
	l := startLoad(t, g, 300, 128)
	Eventually(t, 20*time.Second, "a full window of healthy traffic", func() bool { return cons.Hits.Load() >= 1500 })
	failEvery(5)
	Eventually(t, 15*time.Second, "the switch to trip", func() bool { return e.tripped(t) })
	time.Sleep(500 * time.Millisecond)
	l.stop()

	var s relativeStatus
	g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &s)
	if s.Rule != "error_rate_relative" || !strings.Contains(s.Reason, "vs legacy 0%") {
		t.Errorf("tripped by %q (%s), want error_rate_relative against a clean legacy", s.Rule, s.Reason)
	}
	first, last := cons.FaultWindow()
	if first.IsZero() {
		t.Fatal("consolidated never failed")
	}
	took := last.Sub(first)
	t.Logf("%s; from the first failing answer to the last request on consolidated: %v; %d GETs at %.0f/s, %d errors",
		s.Reason, took, l.sent.Load(), l.rate(), l.errs.Load())
	if took > time.Second {
		t.Errorf("the relative rule took %v to trip, want at most 1s", took)
	}
	if l.rate() < 200 {
		t.Errorf("load reached only %.0f req/s, want at least 200", l.rate())
	}
	l.checkNoErrors(t)
	if v := metricValue(g.metrics(t), `switchback_trips_total{switch="main",rule="error_rate_relative"}`); v != 1 {
		t.Errorf("trips_total{rule=error_rate_relative} = %v, want 1", v)
	}
}

// TestBothArmsUnhealthy: both arms failing at 20% under load trip
// nothing; the switch says both arms are unhealthy in its JSON, traffic
// status, a metric, a WARN log line and an event to the on_trip webhook;
// and says so no longer once both heal.
func TestBothArmsUnhealthy(t *testing.T) {
	hook := newWebhookSink(t)
	legacy, legacyFail := NewFlakyUpstream(t, "legacy")
	cons, consFail := NewFlakyUpstream(t, "consolidated")
	g := StartGateway(t, GatewayConfig{Template: failoverTemplate, Legacy: legacy, Consolidated: cons,
		Extra: map[string]string{"MODE": "split", "WEIGHT": "50", "OPTIONS": strings.Replace(relativeOnly, "}", " window 4s\n}", 1) + "\non_trip webhook " + hook.URL}})
	e := &failoverEnv{g: g, legacy: legacy, consolidated: cons}
	l := startLoad(t, g, 300, 128)
	defer l.stop()
	Eventually(t, 15*time.Second, "traffic on both arms", func() bool { return cons.Hits.Load() >= 300 })
	legacyFail(5)
	consFail(5)

	var s relativeStatus
	Eventually(t, 15*time.Second, "both arms unhealthy", func() bool {
		g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &s)
		return s.BothUnhealthy
	})
	time.Sleep(3 * time.Second) // a while longer, failing alike
	if e.tripped(t) {
		t.Fatalf("both arms failing alike tripped the switch: %s", e.detail(t).Reason)
	}
	g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &s)
	if !s.BothUnhealthy || !strings.HasPrefix(s.BothUnhealthyReason, "both arms unhealthy: ") {
		t.Errorf("both_unhealthy %v %q", s.BothUnhealthy, s.BothUnhealthyReason)
	}
	if len(s.Rules.Relative) != 1 || s.Rules.Relative[0].Text != "error_rate 2x legacy floor 1% min_requests 20" || s.Rules.Relative[0].Current == nil {
		t.Errorf("relative rules shown: %+v", s.Rules.Relative)
	} else if r := *s.Rules.Relative[0].Current; r < 0.5 || r > 2 {
		t.Errorf("current ratio %v, want about 1", r)
	}
	out, errOut, code := g.CLI(t, "traffic", "status")
	if code != 0 {
		t.Fatalf("traffic status: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"!! BOTH ARMS UNHEALTHY", "error_rate 2x legacy floor 1% min_requests 20 (now "} {
		if !strings.Contains(out, want) {
			t.Errorf("traffic status does not show %q:\n%s", want, out)
		}
	}
	m := g.metrics(t)
	if v := metricValue(m, `switchback_both_unhealthy{switch="main"}`); v != 1 {
		t.Errorf("switchback_both_unhealthy = %v, want 1", v)
	}
	if v := metricValue(m, `switchback_relative_ratio{switch="main",rule="error_rate_relative"}`); v < 0.5 || v > 2 {
		t.Errorf("switchback_relative_ratio = %v, want about 1", v)
	}
	Eventually(t, 10*time.Second, "the both_unhealthy webhook", func() bool { _, ok := hook.find("both_unhealthy"); return ok })
	ev, _ := hook.find("both_unhealthy")
	if ev["switch"] != "main" || ev["both_unhealthy"] != true || ev["evidence"] == nil {
		t.Errorf("webhook event %v", ev)
	}
	if !strings.Contains(g.Logs(), "BOTH ARMS UNHEALTHY") {
		t.Error("no BOTH ARMS UNHEALTHY log line")
	}

	legacyFail(0)
	consFail(0)
	Eventually(t, 20*time.Second, "both arms healthy again", func() bool {
		g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &s)
		return !s.BothUnhealthy
	})
	Eventually(t, 10*time.Second, "the both_healthy webhook", func() bool { _, ok := hook.find("both_healthy"); return ok })
	if e.tripped(t) {
		t.Error("tripped on the way back")
	}
	if v := metricValue(g.metrics(t), `switchback_both_unhealthy{switch="main"}`); v != 0 {
		t.Errorf("switchback_both_unhealthy = %v after healing, want 0", v)
	}
}
