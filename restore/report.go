package restore

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Report renders op as the incident report of the rollback procedures
// (INCIDENT REPORT - ROLLBACK EXECUTED), in Markdown. Fields the record
// cannot know (users affected, root cause...) are left as prompts.
func (m *Manager) Report(op Operation) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	kind := map[string]string{KindEmergency: "Emergency", KindRollback: "Full", KindCreate: "Point creation", KindVerify: "Verification", KindCleanup: "Cleanup"}[op.Kind]
	if op.Kind == KindRollback {
		if p, ok := m.pointType(op.Point); ok {
			kind = map[string]string{TypeFullSystem: "Full", TypePartialComponent: "Partial", TypeConfigurationOnly: "Config", TypeData: "Data"}[p]
		}
		if len(op.Only) > 0 {
			kind = "Partial"
		}
	}
	severity := "MEDIUM"
	if op.Kind == KindEmergency || op.Status == StatusFailed {
		severity = "HIGH"
	}
	status := map[string]string{StatusCompleted: "Completed", StatusFailed: "Failed", StatusRunning: "In progress", StatusRolledForward: "Completed (recovered after a crash)", StatusRolledBack: "Failed (reverted after a crash)"}[op.Status]
	dur := time.Duration(op.Duration).Round(time.Millisecond)

	w("# INCIDENT REPORT - ROLLBACK EXECUTED\n\n")
	w("- **Incident ID:** INC-%s\n", strings.TrimPrefix(op.ID, "op-"))
	w("- **Date/Time:** %s\n", op.Started.UTC().Format("2006-01-02 15:04:05 UTC"))
	w("- **Severity:** %s\n\n", severity)
	w("## Summary\n\n")
	reason := op.Reason
	if reason == "" {
		reason = "_No reason recorded._"
	}
	w("%s\n\n", reason)
	if op.Trigger != "" {
		w("Triggered by `%s` on host `%s`.\n\n", op.Trigger, op.Host)
	}
	w("## Rollback details\n\n")
	w("- **Rollback Type:** %s\n", kind)
	w("- **Target Point:** %s\n", orDash(op.Point))
	if op.PreRollbackPoint != "" {
		w("- **State before rollback saved as:** %s\n", op.PreRollbackPoint)
	}
	w("- **Execution Time:** %s\n", dur)
	w("- **Status:** %s\n", status)
	if op.Recovered != nil {
		w("- **Recovered:** %s by %s\n", op.Recovered.UTC().Format(time.RFC3339), op.RecoveredBy)
	}
	if op.Plan != nil {
		w("- **Changes:** %d added, %d removed, %d modified; %d files copied, %d unchanged files linked\n",
			op.Plan.AddedCount, op.Plan.RemovedCount, op.Plan.ModifiedCount, op.Plan.Copied, op.Plan.Linked)
	}
	w("\n### Steps\n\n| # | Step | Started | Duration | Result |\n|---|------|---------|----------|--------|\n")
	for i, s := range op.Steps {
		res := "ok"
		if s.Error != "" {
			res = "**error:** " + mdCell(s.Error)
		} else if s.Detail != "" {
			res = mdCell(s.Detail)
		}
		w("| %d | %s | %s | %s | %s |\n", i+1, s.Name, s.Start.UTC().Format("15:04:05.000"), time.Duration(s.Duration).Round(time.Millisecond), res)
	}
	if len(op.Errors) > 0 {
		w("\n### Errors\n\n")
		for _, e := range op.Errors {
			w("- %s\n", e)
		}
	}
	if op.Validation != nil {
		w("\n### Validation\n\n")
		for _, c := range op.Validation.Checks {
			mark := "x"
			if !c.OK {
				mark = " "
			}
			w("- [%s] %s %s\n", mark, c.Name, c.Detail)
		}
	}
	w("\n## Impact\n\n")
	w("- **Downtime:** %s (from the first step to the end of the restore; adjust with monitoring data)\n", downtime(op))
	w("- **Users Affected:** _to fill in_\n")
	w("- **Data Loss:** %s\n", dataLoss(op))
	w("- **Business Impact:** _to fill in_\n")
	w("\n## Root cause\n\n_Analysis of what caused the need for rollback._\n")
	w("\n## Resolution\n\n")
	for _, s := range op.Steps {
		if s.Error == "" {
			w("- %s", s.Name)
			if s.Detail != "" {
				w(": %s", s.Detail)
			}
			w("\n")
		}
	}
	w("\n## Prevention\n\n_Actions to prevent recurrence._\n")
	w("\n## Lessons learned\n\n_Key takeaways and improvements._\n")
	return b.String()
}

func (m *Manager) pointType(id string) (string, bool) {
	if id == "" {
		return "", false
	}
	p, err := m.GetPoint(context.Background(), id)
	if err != nil {
		return "", false
	}
	return p.Type, true
}

func downtime(op Operation) string {
	if op.Finished == nil {
		return "ongoing"
	}
	return time.Duration(op.Duration).Round(time.Millisecond).String()
}

func dataLoss(op Operation) string {
	if op.PreRollbackPoint != "" {
		return "none expected: the state before the rollback is kept as point " + op.PreRollbackPoint
	}
	return "_to assess_"
}

func mdCell(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
