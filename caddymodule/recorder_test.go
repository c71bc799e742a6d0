package caddymodule

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/leanvibe/switchback/state"
)

// TestRecorderHijacksThroughWrappers: Caddy hands handlers a writer
// wrapped in caddyhttp.ResponseWriterWrapper, which hijacks and flushes
// only through http.ResponseController. An arm behind the recorder must
// still hijack it, in both arms, and the upgrade is never replayed.
func TestRecorderHijacksThroughWrappers(t *testing.T) {
	upgrade := armFunc(func(w http.ResponseWriter, r *http.Request) error {
		// As reverse_proxy does: the 101 first, then the hijack.
		w.Header().Set("Upgrade", "echo")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return err
		}
		defer conn.Close()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo " + line)
		brw.Flush()
		return nil
	})
	for _, mode := range []state.Mode{state.ModeLegacy, state.ModeConsolidated} {
		t.Run(string(mode), func(t *testing.T) {
			h := testHandler(t, mode, 0, upgrade, upgrade)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				r = request(r.Method, "")
				if err := h.ServeHTTP(&caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, r, nil); err != nil {
					t.Errorf("ServeHTTP: %v", err)
				}
			}))
			defer srv.Close()
			conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhello\n"))
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 101 {
				t.Fatalf("status %d, want 101", resp.StatusCode)
			}
			if got, _ := br.ReadString('\n'); got != "echo hello\n" {
				t.Fatalf("after the upgrade got %q, want %q", got, "echo hello\n")
			}
			if n := h.sw.metrics.replays.Get(); n != 0 {
				t.Errorf("an upgraded connection was replayed %d times", n)
			}
		})
	}
}
