package tests

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// requestPathTemplate is a gateway with one switch whose mode is {MODE};
// {OPTIONS} adds lines to the switch block.
const requestPathTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
	switchback main {
		mode {MODE}
		{OPTIONS}
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
	}
}
`

// startRequestPath starts a gateway on requestPathTemplate in front of
// two upstream URLs (host:port).
func startRequestPath(t *testing.T, mode, options, legacy, consolidated string) *Gateway {
	t.Helper()
	return StartGateway(t, GatewayConfig{
		Template: requestPathTemplate,
		Extra:    map[string]string{"MODE": mode, "OPTIONS": options, "LEGACY": legacy, "CONSOLIDATED": consolidated},
	})
}

// wsEcho is a real websocket server that prefixes each message it echoes
// with its name.
func wsEcho(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte(name+":"), msg...)); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestWebsocketThroughBothArms: a websocket upgrade works through the
// legacy arm, and through the consolidated arm with replay on (the
// recorder that holds 5xx answers back), and a hijacked connection is
// neither replayed nor counted as a failure.
func TestWebsocketThroughBothArms(t *testing.T) {
	legacy, cons := wsEcho(t, "legacy"), wsEcho(t, "consolidated")
	for _, arm := range []string{"legacy", "consolidated"} {
		t.Run(arm, func(t *testing.T) {
			g := startRequestPath(t, arm, "", legacy, cons)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, "ws://"+g.HTTP+"/ws", nil)
			if err != nil {
				t.Fatalf("dial through %s: %v (response %v)\n%s", arm, err, resp, g.Logs())
			}
			defer c.CloseNow()
			for i := 0; i < 3; i++ {
				msg := fmt.Sprintf("hello %d", i)
				if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				_, got, err := c.Read(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if want := arm + ":" + msg; string(got) != want {
					t.Fatalf("got %q, want %q", got, want)
				}
			}
			c.Close(websocket.StatusNormalClosure, "")
			m := g.metrics(t)
			for _, want := range []string{
				`switchback_replays_total{switch="main"} 0`,
				fmt.Sprintf(`switchback_failures_total{switch="main",arm=%q} 0`, arm),
			} {
				Eventually(t, 5*time.Second, want, func() bool { m = g.metrics(t); return strings.Contains(m, want) })
			}
			if want := fmt.Sprintf(`switchback_requests_total{switch="main",arm=%q} 1`, arm); !strings.Contains(m, want) {
				t.Errorf("metrics lack %s:\n%s", want, m)
			}
		})
	}
}
