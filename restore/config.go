package restore

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The point types. Each maps to a set of paths in Config; partial_component
// maps to the named components of Config.Components.
const (
	TypeFullSystem        = "full_system"
	TypePartialComponent  = "partial_component"
	TypeConfigurationOnly = "configuration_only"
	TypeData              = "data"
)

// Types lists the point types in the order they are documented.
var Types = []string{TypeFullSystem, TypePartialComponent, TypeConfigurationOnly, TypeData}

// Defaults used when the corresponding Config field is zero.
const (
	DefaultKeepCount   = 10
	DefaultKeepDays    = 30
	DefaultHookTimeout = 5 * time.Minute
)

// Config is the rollback configuration: where backups and logs live, which
// paths each point type covers, retention, hooks and validation. It is
// usually decoded from the gateway's `switchback` global block.
type Config struct {
	// Backups is the directory holding objects/ and manifests/. Required.
	Backups string `json:"backups,omitempty"`

	// Logs is the directory for rollback-<op>.json operation logs. Required.
	Logs string `json:"logs,omitempty"`

	// Types maps full_system, configuration_only and data to the paths
	// (files or directories) a point of that type covers.
	Types map[string][]string `json:"types,omitempty"`

	// Components maps a component name to its paths. A partial_component
	// point covers one named component, or all of them.
	Components map[string][]string `json:"components,omitempty"`

	// Retention says which points Cleanup keeps.
	Retention Retention `json:"retention,omitempty"`

	// Hooks are shell commands run around a restore.
	Hooks Hooks `json:"hooks,omitempty"`

	// ValidateURLs lists URLs that must answer with the given status
	// after a restore and in ValidateSystem. (The field cannot be named
	// Validate, which is the method that checks a Config.)
	ValidateURLs []ValidateURL `json:"validate,omitempty"`
}

// Retention says which points Cleanup keeps: the KeepCount newest and all
// younger than KeepDays days. Tagged points and the newest full_system
// point are always kept.
type Retention struct {
	// KeepCount is how many of the newest points to keep (default 10).
	KeepCount int `json:"keep_count,omitempty"`
	// KeepDays keeps every point younger than this many days (default 30).
	KeepDays int `json:"keep_days,omitempty"`
}

// Hooks are shell command lines, each run with `sh -c`.
type Hooks struct {
	// PreRestore runs before the live tree is touched, e.g. to stop the
	// application. Empty means none. A failing hook aborts the restore.
	PreRestore string `json:"pre_restore,omitempty"`
	// PostRestore runs after the swap, e.g. to start the application.
	PostRestore string `json:"post_restore,omitempty"`
	// Timeout bounds each hook (default 5m).
	Timeout time.Duration `json:"timeout,omitempty"`
}

// ValidateURL is a URL that must answer with Status (default 200).
type ValidateURL struct {
	URL    string `json:"url"`
	Status int    `json:"status,omitempty"`
}

// Validate checks the configuration without side effects.
func (c Config) Validate() error {
	var errs []error
	if c.Backups == "" {
		errs = append(errs, errors.New("backups directory is required"))
	}
	if c.Logs == "" {
		errs = append(errs, errors.New("logs directory is required"))
	}
	for typ, paths := range c.Types {
		switch typ {
		case TypeFullSystem, TypeConfigurationOnly, TypeData:
		case TypePartialComponent:
			errs = append(errs, errors.New("partial_component paths are configured as components, not as a type"))
			continue
		default:
			errs = append(errs, fmt.Errorf("unknown point type %q: want full_system, configuration_only or data", typ))
			continue
		}
		errs = append(errs, checkRoots(typ, paths, c.Backups, c.Logs)...)
	}
	for name, paths := range c.Components {
		if name == "" || strings.ContainsAny(name, " \t/") {
			errs = append(errs, fmt.Errorf("invalid component name %q", name))
		}
		errs = append(errs, checkRoots("component "+name, paths, c.Backups, c.Logs)...)
	}
	if c.Retention.KeepCount < 0 || c.Retention.KeepDays < 0 {
		errs = append(errs, errors.New("retention keep_count and keep_days must not be negative"))
	}
	if c.Hooks.Timeout < 0 {
		errs = append(errs, errors.New("hook timeout must not be negative"))
	}
	for _, v := range c.ValidateURLs {
		u, err := url.Parse(v.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("invalid validate url %q: want http(s)://host/path", v.URL))
		}
		if v.Status != 0 && (v.Status < 100 || v.Status > 599) {
			errs = append(errs, fmt.Errorf("invalid status %d for validate url %s", v.Status, v.URL))
		}
	}
	return errors.Join(errs...)
}

// checkRoots checks one path set: non-empty, no duplicates, no root inside
// another (the swap renames whole roots), none holding the backups or logs.
func checkRoots(what string, paths []string, backups, logs string) []error {
	var errs []error
	if len(paths) == 0 {
		errs = append(errs, fmt.Errorf("%s: no paths", what))
	}
	clean := make([]string, len(paths))
	for i, p := range paths {
		if p == "" {
			errs = append(errs, fmt.Errorf("%s: empty path", what))
			continue
		}
		clean[i] = filepath.Clean(p)
		if filepath.Dir(clean[i]) == clean[i] {
			errs = append(errs, fmt.Errorf("%s: path %s is a filesystem root; a restored path needs a parent directory", what, p))
		}
	}
	for i := range clean {
		for j := range clean {
			if i != j && clean[i] != "" && clean[j] != "" && within(clean[j], clean[i]) {
				errs = append(errs, fmt.Errorf("%s: path %s overlaps %s", what, paths[j], paths[i]))
			}
		}
		for _, d := range []string{backups, logs} {
			if d != "" && clean[i] != "" && within(filepath.Clean(d), clean[i]) {
				errs = append(errs, fmt.Errorf("%s: path %s contains %s", what, paths[i], d))
			}
		}
	}
	return errs
}

// within reports whether p is dir or below it (both cleaned).
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+string(filepath.Separator))
}

// absolute returns c with every path made absolute against the working
// directory.
func (c Config) absolute() (Config, error) {
	abs := func(p string) (string, error) {
		if p == "" {
			return "", nil
		}
		return filepath.Abs(p)
	}
	var err error
	out := c
	if out.Backups, err = abs(c.Backups); err != nil {
		return c, err
	}
	if out.Logs, err = abs(c.Logs); err != nil {
		return c, err
	}
	absAll := func(in map[string][]string) (map[string][]string, error) {
		if in == nil {
			return nil, nil
		}
		m := make(map[string][]string, len(in))
		for k, ps := range in {
			for _, p := range ps {
				a, err := abs(p)
				if err != nil {
					return nil, err
				}
				m[k] = append(m[k], a)
			}
		}
		return m, nil
	}
	if out.Types, err = absAll(c.Types); err != nil {
		return c, err
	}
	if out.Components, err = absAll(c.Components); err != nil {
		return c, err
	}
	if out.Retention.KeepCount == 0 {
		out.Retention.KeepCount = DefaultKeepCount
	}
	if out.Retention.KeepDays == 0 {
		out.Retention.KeepDays = DefaultKeepDays
	}
	if out.Hooks.Timeout == 0 {
		out.Hooks.Timeout = DefaultHookTimeout
	}
	return out, nil
}

// roots returns the paths a point of typ (and component, for
// partial_component) covers, sorted, and the component names involved.
func (c Config) roots(typ, component string) (roots, components []string, err error) {
	switch typ {
	case TypePartialComponent:
		if len(c.Components) == 0 {
			return nil, nil, userErr(nil, "no components are configured")
		}
		if component != "" {
			ps, ok := c.Components[component]
			if !ok {
				return nil, nil, userErr(ErrNotFound, "unknown component %q (configured: %s)", component, strings.Join(sortedKeys(c.Components), ", "))
			}
			return sortedCopy(ps), []string{component}, nil
		}
		seen := map[string]bool{}
		for _, name := range sortedKeys(c.Components) {
			components = append(components, name)
			for _, p := range c.Components[name] {
				if !seen[p] {
					seen[p] = true
					roots = append(roots, p)
				}
			}
		}
		sort.Strings(roots)
		for i := range roots {
			for j := range roots {
				if i != j && within(roots[j], roots[i]) {
					return nil, nil, userErr(nil, "components overlap: %s is inside %s", roots[j], roots[i])
				}
			}
		}
		return roots, components, nil
	case TypeFullSystem, TypeConfigurationOnly, TypeData:
		if component != "" {
			return nil, nil, userErr(nil, "--component applies to partial_component points only")
		}
		ps := c.Types[typ]
		if len(ps) == 0 {
			return nil, nil, userErr(nil, "no paths are configured for point type %s", typ)
		}
		return sortedCopy(ps), nil, nil
	}
	return nil, nil, userErr(nil, "unknown point type %q: want %s", typ, strings.Join(Types, ", "))
}

// allRoots returns every configured path.
func (c Config) allRoots() map[string]bool {
	m := map[string]bool{}
	for _, ps := range c.Types {
		for _, p := range ps {
			m[p] = true
		}
	}
	for _, ps := range c.Components {
		for _, p := range ps {
			m[p] = true
		}
	}
	return m
}

func sortedKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
