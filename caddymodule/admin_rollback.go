package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/leanvibe/switchback/restore"
	"github.com/leanvibe/switchback/state"
)

// The rollback routes, under /switchback/:
//
//	GET  points[?limit=N&type=T]        list rollback points, newest first
//	POST points                         create a point: {"type","component","metadata","tags","trigger"}
//	GET  points/{id}                    one point
//	POST points/{id}/verify             re-hash a point's objects: {"repair"}
//	POST points/verify                  verify every point: {"repair"}
//	POST points/{id}/rollback           restore: {"trigger","reason","force","dry_run","only","wait"}
//	POST emergency                      {"reason"}
//	POST cleanup                        {"keep_count","keep_days","dry_run"}
//	POST validate                       {"level"}
//	GET  operations[?limit=N]           operation records, newest first
//	GET  operations/{id}                one record
//	GET  operations/{id}/report         its incident report, in Markdown
//
// VerifyRequest is the body of POST points/{id}/verify and points/verify.
// An empty body only verifies.
type VerifyRequest struct {
	// Repair rewrites missing or corrupt objects from live files whose
	// content hashes to them, and reports what it repaired and what not.
	Repair bool `json:"repair,omitempty"`
}

func (a *App) handleRollbackAPI(w http.ResponseWriter, r *http.Request, parts []string) error {
	switch {
	case len(parts) == 1 && parts[0] == "points":
		if r.Method == http.MethodPost {
			return a.handleCreatePoint(w, r)
		}
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		limit, err := queryInt(r, "limit")
		if err != nil {
			return err
		}
		pts, err := a.restore.ListPoints(r.Context(), restore.ListOptions{Limit: limit, Type: r.URL.Query().Get("type")})
		if err != nil {
			return restoreErr(err)
		}
		return writeJSON(w, http.StatusOK, nonNil(pts))
	case len(parts) == 2 && parts[0] == "points" && parts[1] == "verify":
		if err := method(r, http.MethodPost); err != nil {
			return err
		}
		var req VerifyRequest
		if err := decodeBody(r, &req); err != nil {
			return err
		}
		verify := a.restore.VerifyAll
		if req.Repair {
			verify = a.restore.RepairAll
		}
		reps, err := verify(r.Context())
		return writeResult(w, reps, err)
	case len(parts) == 2 && parts[0] == "points":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		p, err := a.restore.GetPoint(r.Context(), parts[1])
		if err != nil {
			return restoreErr(err)
		}
		return writeJSON(w, http.StatusOK, p)
	case len(parts) == 3 && parts[0] == "points" && parts[2] == "verify":
		if err := method(r, http.MethodPost); err != nil {
			return err
		}
		var req VerifyRequest
		if err := decodeBody(r, &req); err != nil {
			return err
		}
		verify := a.restore.VerifyPoint
		if req.Repair {
			verify = a.restore.RepairPoint
		}
		rep, err := verify(r.Context(), parts[1])
		return writeResult(w, rep, err)
	case len(parts) == 3 && parts[0] == "points" && parts[2] == "rollback":
		if err := method(r, http.MethodPost); err != nil {
			return err
		}
		var req RollbackRequest
		if err := decodeBody(r, &req); err != nil {
			return err
		}
		op, err := a.restore.Rollback(r.Context(), parts[1], req.options())
		return writeResult(w, op, err)
	case len(parts) == 1 && parts[0] == "emergency":
		if err := method(r, http.MethodPost); err != nil {
			return err
		}
		var req struct {
			Reason string `json:"reason"`
			By     string `json:"by,omitempty"`
		}
		if err := decodeBody(r, &req); err != nil {
			return err
		}
		op, err := a.emergency(r.Context(), req.Reason, who(r, req.By))
		return writeResult(w, op, err)
	case len(parts) == 1 && parts[0] == "cleanup":
		if err := method(r, http.MethodPost); err != nil {
			return err
		}
		var req restore.CleanupOptions
		if err := decodeBody(r, &req); err != nil {
			return err
		}
		rep, err := a.restore.Cleanup(r.Context(), req)
		return writeResult(w, rep, err)
	case len(parts) == 1 && parts[0] == "validate":
		if err := method(r, http.MethodPost); err != nil {
			return err
		}
		var req struct {
			Level string `json:"level"`
		}
		if err := decodeBody(r, &req); err != nil {
			return err
		}
		rep, err := a.restore.ValidateSystem(r.Context(), req.Level)
		return writeResult(w, rep, err)
	case len(parts) == 1 && parts[0] == "operations":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		limit, err := queryInt(r, "limit")
		if err != nil {
			return err
		}
		ops, err := a.restore.ListOperations(r.Context(), limit)
		if err != nil {
			return restoreErr(err)
		}
		return writeJSON(w, http.StatusOK, nonNil(ops))
	case len(parts) == 2 && parts[0] == "operations":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		op, err := a.restore.GetOperation(r.Context(), parts[1])
		if err != nil {
			return restoreErr(err)
		}
		return writeJSON(w, http.StatusOK, op)
	case len(parts) == 3 && parts[0] == "operations" && parts[2] == "report":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		op, err := a.restore.GetOperation(r.Context(), parts[1])
		if err != nil {
			return restoreErr(err)
		}
		w.Header().Set("Content-Type", "text/markdown; charset=utf-8")
		_, err = w.Write([]byte(a.restore.Report(op)))
		return err
	}
	return apiErr(http.StatusNotFound, "no such switchback endpoint: %s", r.URL.Path)
}

// CreatePointRequest is the body of POST /switchback/points.
type CreatePointRequest struct {
	Type      string          `json:"type"`
	Component string          `json:"component,omitempty"`
	Metadata  json.RawMessage `json:"metadata,omitempty"`
	Tags      []string        `json:"tags,omitempty"`
	Trigger   string          `json:"trigger,omitempty"`
}

func (a *App) handleCreatePoint(w http.ResponseWriter, r *http.Request) error {
	var req CreatePointRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := a.checkPointType(req.Type); err != nil {
		return err
	}
	p, err := a.restore.CreatePoint(r.Context(), req.options())
	if err != nil {
		return restoreErr(err)
	}
	return writeJSON(w, http.StatusCreated, p)
}

// RollbackRequest is the body of POST /switchback/points/{id}/rollback.
type RollbackRequest struct {
	Trigger string   `json:"trigger,omitempty"`
	Reason  string   `json:"reason,omitempty"`
	Force   bool     `json:"force,omitempty"`
	DryRun  bool     `json:"dry_run,omitempty"`
	Only    []string `json:"only,omitempty"`
	// Wait is how long to wait for the restore lock while another
	// restore holds it (default: fail at once).
	Wait caddy.Duration `json:"wait,omitempty"`
}

func (r RollbackRequest) options() restore.RollbackOptions {
	return restore.RollbackOptions{Trigger: r.Trigger, Reason: r.Reason, Force: r.Force, DryRun: r.DryRun, Only: r.Only, LockWait: time.Duration(r.Wait)}
}

// emergency runs an emergency rollback with this gateway's switches as
// step 1.
func (a *App) emergency(ctx context.Context, reason, by string) (restore.Operation, error) {
	return a.restore.Emergency(ctx, restore.EmergencyOptions{
		Reason: reason,
		ForceLegacy: func(ctx context.Context) (string, error) {
			n, err := a.forceAllLegacy(ctx, "emergency: "+reason, by)
			return fmt.Sprintf("%d switches moved to legacy through the gateway", n), err
		},
	})
}

// writeResult writes an operation's result. A failed operation still has a
// record worth returning, so the body is {"error": ..., "result": ...}.
func writeResult(w http.ResponseWriter, result any, err error) error {
	if err == nil {
		return writeJSON(w, http.StatusOK, result)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	status := errStatus(err)
	return writeJSON(w, status, struct {
		Error  string `json:"error"`
		Result any    `json:"result"`
	}{err.Error(), result})
}

// restoreErr maps a restore error to an admin API error.
func restoreErr(err error) error {
	return apiErr(errStatus(err), "%v", err)
}

// errStatus is the HTTP status of a restore error. The CLI maps it back to
// an exit code.
func errStatus(err error) int {
	var ue *restore.Error
	switch {
	case errors.Is(err, state.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, restore.ErrRestoreInProgress), errors.Is(err, state.ErrLockHeld):
		return http.StatusConflict
	case errors.Is(err, restore.ErrValidationFailed):
		return StatusValidationFailed
	case errors.Is(err, restore.ErrVerifyFailed), errors.Is(err, restore.ErrForeignPoint), errors.Is(err, restore.ErrUnfinished), errors.Is(err, restore.ErrMountPoint):
		return http.StatusUnprocessableEntity
	case errors.Is(err, state.ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.As(err, &ue):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// StatusValidationFailed is the status of a validation failure, apart from
// other 422s so the CLI can exit with code 4.
const StatusValidationFailed = 424

func queryInt(r *http.Request, key string) (int, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, apiErr(http.StatusBadRequest, "invalid %s %q: want a whole number", key, v)
	}
	return n, nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// writeRollbackMetrics adds the restore metrics: the last operation of
// each kind and whether it failed.
func (a *App) writeRollbackMetrics(buf *bytes.Buffer) {
	ops, err := a.restore.ListOperations(context.Background(), 50)
	if err != nil {
		return
	}
	seen := map[string]bool{}
	for _, op := range ops {
		if seen[op.Kind] || op.Status == restore.StatusRunning {
			continue
		}
		seen[op.Kind] = true
		failed := op.Status == restore.StatusFailed
		fmt.Fprintf(buf, "switchback_operation_last_failed{kind=%q} %g\n", op.Kind, b2f(failed))
		fmt.Fprintf(buf, "switchback_operation_last_timestamp_seconds{kind=%q} %d\n", op.Kind, op.Started.Unix())
	}
}
