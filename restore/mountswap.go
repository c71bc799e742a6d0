package restore

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A root that is a mount point (a volume, a bind mount, a filesystem of
// its own) cannot be renamed, so it is restored from inside: its stage is
// built inside it, ".switchback-stage-<op>", on the mount's own
// filesystem, and the swap exchanges the root's entries one by one
// (renameat2 RENAME_EXCHANGE where both trees have a name, a rename
// where one has), moving the old entries into ".switchback-old-<op>".
// Each name holds its old or its new entry at every instant, never
// nothing (with the exchange). The root directory's own owner, mode,
// xattrs and mtime are set on it afterwards.
//
// Which entry is old and which is new is told by inode, from the swap
// list (logs/.switchback-swap-<op>-<n>): the root's metadata and the
// inode of every entry directly in it, old (written before the stage
// exists) and new (written once the stage is complete, and made durable
// with it). Recovery reads it to finish the swap either way from any
// state a crash leaves, and refuses when the root holds an entry it does
// not list (something wrote there since). Those names directly inside a
// root are the restorer's own: a point never records them.

// Names of a mount root's stage and old entries, by op.
const (
	mountStagePrefix = ".switchback-stage-"
	mountOldPrefix   = ".switchback-old-"
)

// isRestorerName reports whether name, directly in a root, is one of a
// mount-point restore's own.
func isRestorerName(name string) bool {
	return strings.HasPrefix(name, mountStagePrefix+"op-") || strings.HasPrefix(name, mountOldPrefix+"op-")
}

// mountJournalRoot is the journal entry of mount root root for op; its
// swap list goes in logs, as the op's i-th.
//
// Its LiveIno is the mount root's inode from the start, so recovery
// refuses to touch the directory under it should the mount be gone.
func mountJournalRoot(root, op, logs string, i int, absent bool) (JournalRoot, error) {
	ino, ok, err := lstatIno(root)
	if err == nil && !ok {
		err = fmt.Errorf("%s vanished", root)
	}
	return JournalRoot{
		LiveIno:      ino,
		Path:         root,
		Stage:        filepath.Join(root, mountStagePrefix+op),
		Old:          filepath.Join(root, mountOldPrefix+op),
		Swap:         filepath.Join(logs, fmt.Sprintf(".switchback-swap-%s-%d", op, i)),
		Mount:        true,
		TargetAbsent: absent,
	}, err
}

// rootMeta is the metadata of a mount root directory.
type rootMeta struct {
	Mode, UID, GID uint32
	MTime          int64
	Xattrs         []Xattr
}

// swapList is the content of a mount root's swap list.
type swapList struct {
	old, new         map[string]uint64
	oldMeta, newMeta rootMeta
	complete         bool // the stage is complete: new and newMeta are set
}

// readRootMeta returns the metadata of the directory at p and its
// entries' inodes, leaving out the restorer's own names.
func readRootMeta(p string) (rootMeta, map[string]uint64, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return rootMeta{}, nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return rootMeta{}, nil, err
	}
	xs, err := listXattrsFd(fd)
	if err != nil {
		return rootMeta{}, nil, fmt.Errorf("reading the extended attributes of %s: %w", p, err)
	}
	inos, err := childInodes(fd, p)
	return rootMeta{Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, MTime: st.Mtim.Nano(), Xattrs: xs}, inos, err
}

// childInodes returns the inode of every entry of the directory dirFd
// but the restorer's own.
func childInodes(dirFd int, p string) (map[string]uint64, error) {
	names, err := readNames(dirFd)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	out := make(map[string]uint64, len(names))
	for _, n := range names {
		if isRestorerName(n) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dirFd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, fmt.Errorf("reading %s/%s: %w", p, n, err)
		}
		out[n] = st.Ino
	}
	return out, nil
}

// encode writes the list: a line per fact, names and xattrs in hex, so
// every byte of a name survives.
func (l *swapList) encode() []byte {
	var b bytes.Buffer
	b.WriteString("switchback-swap 1\n")
	meta := func(which string, m rootMeta) {
		fmt.Fprintf(&b, "meta-%s %d %d %d %d\n", which, m.Mode, m.UID, m.GID, m.MTime)
		for _, x := range m.Xattrs {
			fmt.Fprintf(&b, "xattr-%s %x %x\n", which, x.Name, x.Value)
		}
	}
	inos := func(which string, m map[string]uint64) {
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			fmt.Fprintf(&b, "%s %d %x\n", which, m[n], n)
		}
	}
	meta("old", l.oldMeta)
	inos("old", l.old)
	if l.complete {
		meta("new", l.newMeta)
		inos("new", l.new)
		b.WriteString("end\n")
	}
	return b.Bytes()
}

// parseSwapList reads what encode wrote; a list without its end line is
// one whose stage was never completed.
func parseSwapList(data []byte) (*swapList, error) {
	l := &swapList{old: map[string]uint64{}, new: map[string]uint64{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	line := 0
	bad := func(why string) error { return fmt.Errorf("swap list line %d: %s", line, why) }
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if line == 1 {
			if len(f) != 2 || f[0] != "switchback-swap" || f[1] != "1" {
				return nil, bad("not a swap list of version 1")
			}
			continue
		}
		if l.complete {
			return nil, bad("text after the end")
		}
		if len(f) == 0 {
			return nil, bad("empty")
		}
		meta, inos := &l.oldMeta, l.old
		if strings.HasSuffix(f[0], "new") {
			meta, inos = &l.newMeta, l.new
		}
		switch f[0] {
		case "end":
			if len(f) != 1 {
				return nil, bad("end takes nothing")
			}
			l.complete = true
		case "meta-old", "meta-new":
			if len(f) != 5 {
				return nil, bad("meta wants mode, uid, gid and mtime")
			}
			var n [4]int64
			for i := range n {
				v, err := strconv.ParseInt(f[i+1], 10, 64)
				if err != nil || i < 3 && (v < 0 || v > 1<<32-1) {
					return nil, bad("bad number " + strconv.Quote(f[i+1]))
				}
				n[i] = v
			}
			*meta = rootMeta{Mode: uint32(n[0]), UID: uint32(n[1]), GID: uint32(n[2]), MTime: n[3], Xattrs: meta.Xattrs}
		case "xattr-old", "xattr-new":
			if len(f) != 3 {
				return nil, bad("xattr wants a name and a value")
			}
			name, err1 := hex.DecodeString(f[1])
			value, err2 := hex.DecodeString(f[2])
			if err1 != nil || err2 != nil || len(name) == 0 {
				return nil, bad("bad hex")
			}
			meta.Xattrs = append(meta.Xattrs, Xattr{Name: string(name), Value: string(value)})
		case "old", "new":
			if len(f) != 3 {
				return nil, bad("an entry wants an inode and a name")
			}
			ino, err := strconv.ParseUint(f[1], 10, 64)
			name, err2 := hex.DecodeString(f[2])
			if err != nil || err2 != nil || ino == 0 {
				return nil, bad("bad inode or name")
			}
			n := string(name)
			if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") || isRestorerName(n) {
				return nil, bad("bad name " + strconv.Quote(n))
			}
			if _, dup := inos[n]; dup {
				return nil, bad("name listed twice")
			}
			inos[n] = ino
		default:
			return nil, bad("unknown " + strconv.Quote(f[0]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if line == 0 {
		return nil, errors.New("swap list is empty")
	}
	return l, nil
}

// writeSwapList writes l to p atomically and durably.
func writeSwapList(p string, l *swapList) error {
	return writeFileAtomic(p, l.encode(), 0o600)
}

// loadSwapList reads the swap list of jr; nil if there is none yet.
func loadSwapList(jr JournalRoot) (*swapList, error) {
	data, err := os.ReadFile(jr.Swap)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	l, err := parseSwapList(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", jr.Swap, err)
	}
	return l, nil
}

// inoIn returns the inode of name in dir, 0 if there is none.
func inoIn(dir, name string) (uint64, error) {
	ino, _, err := lstatIno(filepath.Join(dir, name))
	return ino, err
}

// sortedNames returns m's names in byte order.
func sortedNames(m map[string]uint64) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// mountState says whether the swap of mount root jr can be finished
// forward and back, from the inodes at its names; foreign lists entries
// of the root the swap list does not know.
func mountState(jr JournalRoot) (canFwd, canBack bool, why, foreign []string, err error) {
	ino, ok, err := lstatIno(jr.Path)
	if err != nil {
		return false, false, nil, nil, err
	}
	if !ok || jr.LiveIno != 0 && ino != jr.LiveIno {
		return false, false, nil, []string{fmt.Sprintf("%s (inode %d; the journal has %d)", jr.Path, ino, jr.LiveIno)}, nil
	}
	l, err := loadSwapList(jr)
	if err != nil {
		return false, false, nil, nil, err
	}
	if l == nil {
		// Written before anything is made in the root, removed after
		// everything is done: either way is complete.
		return true, true, nil, nil, nil
	}
	if !l.complete {
		// Nothing was moved before the list was complete.
		return false, true, []string{"the stage of " + jr.Path + " was never completed"}, nil, nil
	}
	canFwd, canBack = true, true
	live, err := os.Open(jr.Path)
	if err != nil {
		return false, false, nil, nil, err
	}
	have, err := childInodes(int(live.Fd()), jr.Path)
	live.Close()
	if err != nil {
		return false, false, nil, nil, err
	}
	for n, ino := range have {
		if l.new[n] != ino && l.old[n] != ino {
			foreign = append(foreign, fmt.Sprintf("%s/%s (inode %d, not in the swap list)", jr.Path, n, ino))
		}
	}
	slices.Sort(foreign)
	for _, n := range sortedNames(l.new) {
		s, err := inoIn(jr.Stage, n)
		if err != nil {
			return false, false, nil, nil, err
		}
		if have[n] != l.new[n] && s != l.new[n] {
			canFwd = false
			why = append(why, "the staged "+jr.Path+"/"+n+" is gone")
			break
		}
	}
	for _, n := range sortedNames(l.old) {
		s, err1 := inoIn(jr.Stage, n)
		o, err2 := inoIn(jr.Old, n)
		if err := errors.Join(err1, err2); err != nil {
			return false, false, nil, nil, err
		}
		if w := l.old[n]; have[n] != w && s != w && o != w {
			canBack = false
			why = append(why, "the old "+jr.Path+"/"+n+" is gone")
			break
		}
	}
	return canFwd, canBack, why, foreign, nil
}

// rollForwardMount puts the staged entries of mount root jr in place of
// the old ones, from any state a crash leaves, then gives the root its
// metadata. hook, if set, is called between the steps (tests crash there).
func rollForwardMount(jr JournalRoot, hook func(string) error) error {
	l, err := loadSwapList(jr)
	if err != nil {
		return err
	}
	if l == nil {
		// Removed once the swap was complete (only the journal's
		// phase said otherwise).
		return nil
	}
	if !l.complete {
		return fmt.Errorf("cannot complete restore of %s: its stage was never completed", jr.Path)
	}
	if err := os.Mkdir(jr.Old, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	at := func(dir, n string) string { return filepath.Join(dir, n) }
	for _, n := range sortedNames(l.new) {
		want := l.new[n]
		r, err1 := inoIn(jr.Path, n)
		s, err2 := inoIn(jr.Stage, n)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		switch {
		case r == want:
			// In place; the stage may hold the old entry an exchange put
			// there (or a second name of the same file: left for removal).
			if s != 0 && s != want {
				if err := os.Rename(at(jr.Stage, n), at(jr.Old, n)); err != nil {
					return err
				}
			}
			continue
		case s != want:
			return fmt.Errorf("cannot complete restore of %s: the staged %s is gone", jr.Path, n)
		case r == 0:
			if err := os.Rename(at(jr.Stage, n), at(jr.Path, n)); err != nil {
				return err
			}
		default:
			if err := swapNames(at(jr.Stage, n), at(jr.Path, n), at(jr.Old, n), true); err != nil {
				return err
			}
			if hook != nil {
				if err := hook("mount-exchanged " + n); err != nil {
					return err
				}
			}
			if s, err := inoIn(jr.Stage, n); err != nil {
				return err
			} else if s != 0 {
				if err := os.Rename(at(jr.Stage, n), at(jr.Old, n)); err != nil {
					return err
				}
			}
		}
		if hook != nil {
			if err := hook("mount-moved " + n); err != nil {
				return err
			}
		}
	}
	// What the point lacks goes aside.
	d, err := os.Open(jr.Path)
	if err != nil {
		return err
	}
	have, err := childInodes(int(d.Fd()), jr.Path)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range sortedNames(have) {
		if _, ok := l.new[n]; !ok {
			if err := os.Rename(at(jr.Path, n), at(jr.Old, n)); err != nil {
				return err
			}
		}
	}
	if err := syncDir(jr.Path); err != nil {
		return err
	}
	return setRootMeta(jr.Path, l.newMeta)
}

// rollBackMount puts the old entries of mount root jr back, from any
// state a crash leaves, removes the restore's own names and gives the
// root its old metadata.
func rollBackMount(jr JournalRoot) error {
	l, err := loadSwapList(jr)
	if err != nil {
		return err
	}
	if l != nil && l.complete {
		at := func(dir, n string) string { return filepath.Join(dir, n) }
		// New entries in place go to the trash (Old+".new"), the old ones
		// come back: from the stage, where an exchange put them, or from
		// the old directory below.
		trash := jr.Old + ".new"
		if err := os.Mkdir(trash, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		for _, n := range sortedNames(l.new) {
			want := l.new[n]
			r, err1 := inoIn(jr.Path, n)
			s, err2 := inoIn(jr.Stage, n)
			if err := errors.Join(err1, err2); err != nil {
				return err
			}
			switch {
			case want == l.old[n]:
				// The same file, old and new.
			case r == want && s != 0:
				if err := swapNames(at(jr.Stage, n), at(jr.Path, n), at(trash, n), true); err != nil {
					return err
				}
			case r == want:
				if err := os.Rename(at(jr.Path, n), at(trash, n)); err != nil {
					return err
				}
			case r == 0 && s != 0 && s != want:
				// Cut between the two renames of a swap without exchange.
				if err := os.Rename(at(jr.Stage, n), at(jr.Path, n)); err != nil {
					return err
				}
			}
		}
		if d, err := os.Open(jr.Old); err == nil {
			moved, err := childInodes(int(d.Fd()), jr.Old)
			d.Close()
			if err != nil {
				return err
			}
			for _, n := range sortedNames(moved) {
				if err := os.Rename(at(jr.Old, n), at(jr.Path, n)); err != nil {
					return fmt.Errorf("putting back %s: %w", at(jr.Path, n), err)
				}
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := syncDir(jr.Path); err != nil {
		return err
	}
	if l == nil {
		return removeLeftovers(jr)
	}
	return finishMount(jr, l.oldMeta)
}

// finishMount removes mount root jr's stage and old entries, gives the
// root meta (removing them moved its mtime), and removes the swap list
// last, so a crash in between finds it again.
func finishMount(jr JournalRoot, meta rootMeta) error {
	if err := errors.Join(removeTree(jr.Stage), removeTree(jr.Old), removeTree(jr.Old+".new")); err != nil {
		return err
	}
	if err := setRootMeta(jr.Path, meta); err != nil {
		return err
	}
	return removeLeftovers(jr) // the swap list (and its temp files) last
}

// setRootMeta gives the directory p owner (where this process may),
// xattrs, mode and mtime m.
func setRootMeta(p string, m rootMeta) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	e := Entry{Path: ".", Type: EntryDir, Mode: m.Mode, UID: m.UID, GID: m.GID, MTime: m.MTime, Xattrs: m.Xattrs}
	if _, err := applyMeta(fd, e); err != nil {
		return fmt.Errorf("restoring the metadata of %s: %w", p, err)
	}
	ts := unix.NsecToTimespec(m.MTime)
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("restoring the mtime of %s: %w", p, err)
	}
	return unix.Fsync(fd)
}
