// Package restore implements switchback's rollback points: a
// content-addressed object store, per-point manifests, an atomic and
// crash-safe restorer, retention, and operation records. It never imports
// caddy: the CLI uses it directly when the gateway is down.
//
// # Storage
//
// backups/objects/ab/abcdef... holds file contents named by their SHA-256
// (64 hex characters, checked before any use). An object is written to a
// temp file, made durable, renamed into place and its directory fsynced,
// so an object that exists under its name is complete; identical content
// is stored once across all points. A create writes all its new objects
// as one batch: one syncfs(2) before the renames instead of two fsyncs an
// object, which made the first create of an 11k-file tree about three
// times faster. Temp files a killed create leaves are removed by cleanup after
// an hour. An existing object of the wrong size, or one verify flagged as
// corrupt (backups/objects/.corrupt/<digest>, durable until the object is
// good again), is replaced by a fresh copy with a rename; a flagged digest
// is never reused for an unchanged file.
//
// Creates and cleanup share the object store's lease, an flock on
// backups/objects/.lease: a create holds it shared from choosing its
// parent point until its catalog record is written, cleanup exclusive
// while it collects, deciding from the catalog as it is then. So no point
// is committed naming an object cleanup removed. The lease is per host
// like the objects, and dies with its holder.
//
// backups/manifests/<point>.json is a point's manifest (version 2; version
// 1 is still read): for each root (a configured file or directory, by
// absolute path) the filesystem clock when its scan began, then every
// entry below it, parents before children, with path (relative,
// slash-separated), type (file, dir, symlink, fifo), mode, uid, gid,
// mtime and ctime in nanoseconds, size, digest, link target, inode,
// hard-link group and extended attributes. Names, link targets and xattr
// names are bytes: where they are not UTF-8 the JSON holds them in base64
// (path_b64, target_b64, name_b64), so nothing is mangled and no two names
// collide; xattr values are always base64. Empty directories are
// recorded; symlinks are recorded as links and never followed; sockets and
// devices are skipped with a warning (a restore keeps the live ones where
// the restored tree has their directory: keepSpecial). The manifest's SHA-256 is the
// manifest_digest of the point's catalog record (points/<id> in the state
// store), which is written last: a create that fails leaves no catalog
// entry and no manifest, only complete, unreferenced objects that Cleanup
// collects.
//
// A create walks each root by directory handles (fstatat, then openat
// with O_NOFOLLOW relative to the directory's handle, its identity checked),
// so no path is resolved twice and paths longer than PATH_MAX work. Files
// are read through a handle opened below the root's parent with openat2
// RESOLVE_NO_SYMLINKS (or one O_NOFOLLOW openat per component) and
// O_NONBLOCK, so neither a directory swapped for a symlink nor a file
// swapped for a FIFO after the walk can fool or hang it; the handle is
// fstat'ed and must be the walked file (device, inode, type). After the
// read it is fstat'ed again: a read the file changed under (size, mtime,
// ctime) is retried, and after three the point keeps the last read,
// marked changed (Point.ChangedCount), with a warning.
//
// A new point reuses the digest (and xattrs) of every entry whose size,
// mtime, ctime and inode match the newest point of this host for the same
// root, and whose mtime and ctime are older than that point's scan start
// (git's racy-timestamp rule: a change in the same clock tick after the
// read would keep both). So a point of an unchanged tree costs one stat
// per entry, and an edit that keeps size and mtime (cp -p, touch -r) is
// hashed again, since it moves ctime.
//
// A restore leaves, for each root it swapped, a record of the entries
// as it left them (backups/restored/, see restored.go), taken once the
// old trees are gone and before post_restore; the next point takes it
// as its parent where it is newer, so the first point after a restore
// does not hash again the files the restore copied or linked.
//
// Manifests are read by parseManifest, a strict parser of exactly this
// format that decodes what encoding/json would (it is fuzzed against it)
// at 3.5 times the speed; every path in them is then checked.
//
// # Verify
//
// Verify re-hashes every object a point references, once each, biggest
// first, on as many workers as cores, with raw system calls (objcheck.go):
// one read of an object's size plus a byte, with O_NOATIME where the
// caller owns the objects.
//
// # Restore
//
// Rollback runs these steps, each recorded in the operation's
// steps_completed with its start, duration and error:
//
//  1. pre_checks: the point was created on this host (ErrForeignPoint
//     otherwise: its objects are on another host's disk), exists, its
//     manifest matches its digest, its objects are present with their
//     recorded sizes, every object staging will copy re-hashes to its
//     name, no root the restore changes is a mount point it would have
//     to remove or make a file (ErrMountPoint; a directory mount root is
//     restored from inside, see mountswap.go),
//     and each filesystem has room for what will be written there: the
//     stage's copies on each root's filesystem, the pre-rollback point's
//     new objects on the backups' (statfs, with a margin). Force skips the
//     integrity and space checks only.
//  2. lock: the state store's restore lock (fleet-wide with Consul, a
//     cross-process flock with the local store). A held lock fails with
//     ErrRestoreInProgress: "restore in progress on HOST (op ID)", at once
//     or after RollbackOptions.LockWait. Holding it, the restore first
//     recovers this host's unfinished restores (see Recover), and refuses
//     (ErrUnfinished) while one remains.
//  3. pre_restore hook, so an application still writing is stopped before
//     its files are read.
//  4. pre_rollback_point: an automatic point of the same roots as they
//     are now (Auto "pre-rollback", metadata {"auto":"pre-rollback","for":ID}).
//     If it fails, an emergency records the failure loudly and restores
//     anyway; a rollback refuses unless forced.
//  5. stage: for each root that differs, a staging tree is built next to
//     it, ".<name>.switchback-stage-<op>", on the same filesystem, through
//     an os.Root on the parent directory. A file whose content, owner,
//     mode, xattrs and mtime already match the live file (per the
//     pre-rollback point, whose digests are proven: hashed, or reused under
//     the rule above) is hard-linked from the live tree after a re-check by
//     inode, size, mtime and ctime; the link made is checked again (inode,
//     size, mtime) and replaced by a copy if the name was swapped in
//     between. Only differing content is copied from objects. Copies get
//     their owner (as root), then xattrs, then mode (chown clears setuid
//     and file capabilities); as another user, a setuid or setgid bit is
//     not set where the owner cannot be, and the record's warnings say so.
//     Further names of a hard-link group are linked to the first; FIFOs are
//     made with mkfifoat. Directory owners, xattrs, modes and mtimes are set
//     once they are filled.
//     Files are staged directory by directory, through a handle on the
//     stage directory and one on the live directory (used only if its
//     inode is the one the pre-rollback point recorded), so each link or
//     create resolves one name. Every copied file is hashed as it is
//     written and must match its digest.
//  6. fsync: one syncfs(2) per staged root, on the filesystem of its
//     parent, makes every file, link and directory of the stage durable.
//  7. swap: each root is exchanged with its stage by renameat2
//     RENAME_EXCHANGE, one atomic step; where the filesystem cannot, the
//     live tree is renamed to ".<name>.switchback-old-<op>" and the stage
//     into place. A mount root has its stage inside it and its entries
//     exchanged one by one, told apart by the inodes of its swap list
//     (mountswap.go). Then the old trees are removed.
//  8. post_restore hook.
//  9. validate: the restored roots are compared with the point (types,
//     modes, owners, xattrs, sizes, mtimes, link targets, hard-link groups)
//     and the validate URLs queried. ValidateSystem at level standard also
//     re-hashes every file.
//
// A restore costs in proportion to what changed, pre-checks included: only
// objects that will be read are re-hashed. An object is read only for a
// file added or modified (by type, mode, size or mtime) relative to the
// live tree. A file whose metadata matches is linked from the live tree
// when the pre-rollback point, taken under the lock, gives it the
// point's digest; that digest was either hashed just now or reused from
// an earlier point for the same inode, size, mtime and ctime outside the
// racy tick, the same trust every point creation places in unchanged
// files. Its object is not
// read, so a rotten copy of it does not stop this restore (it only checks
// that the object is present and of the right size); point verify finds
// it. Should staging copy an object the pre-checks did not hash (a file
// whose content changed while keeping size and mtime), the hash computed
// while copying still refuses corrupt content, before anything is
// swapped.
//
// The live tree is never written in place. Manifest paths are not
// trusted: absolute paths, "..", empty segments and entries whose parent is
// not a directory of the manifest are refused when decoding, roots must be
// configured paths, and all writes go through os.Root.
//
// A restore that fails before the swap completes puts every root back,
// removes the stages and deletes the pre-rollback point, so the live paths
// and the catalog are as they were. A lost lock or a cancelled context is
// noticed between files and before each root's swap and handled the same
// way. If pre_restore ran, post_restore runs on failure too, so a stopped
// application is started again.
//
// # Journal and crash behaviour
//
// The operation record (operations/<op> in the store and
// logs/rollback-<op>.json, both written atomically) carries a journal: the
// phase and, per root, the live, stage and old names, whether the point
// lacks the path, and the inodes of the staged tree and of the live tree.
// It is saved before every change to a live name:
//
//	staging   stage names recorded; stages being built (live untouched)
//	swapping  stages complete and synced, inodes recorded; per root,
//	          state "swapping" is saved before its rename and "swapped" after
//	swapped   all roots swapped; old trees being removed
//	reverting a failed swap is being undone
//
// Each rename is atomic, so after kill -9 at any instant each root's live
// name holds exactly the old tree or exactly the new one (with the
// fallback two-rename swap, the name may be briefly absent, with the old
// tree under the old name). Recover, run by the CLI before each command,
// by every restore once it holds the lock, and by the gateway at start
// (again and again while the lock is held), takes the restore lock (so it
// never races a live restore) and finishes this host's restores still
// "running" whose process is gone. A host is its id (Options.HostIDFile),
// recorded in every operation and point with the host name; other hosts'
// operations are never touched, however old. A process is gone when its
// pid no longer runs with the start time it recorded (/proc/<pid>/stat)
// or the boot id changed, so a reused pid is not taken for it. For all
// roots of an operation together, after checking each root's inodes
// against the journal (a root holding a tree the journal does not know
// stops it: nothing is touched, the operation is marked failed): from
// staging or reverting it rolls back (the live names keep, or get back,
// the old trees, found by inode; stages are removed; the pre-rollback point
// is dropped, found by its op even when the process died between
// recording it and naming it in the operation) and records status
// rolled_back; a restore that died before staging is marked failed, its
// pre-rollback point dropped the same way. From swapping on it rolls
// forward (the stages are complete, so every root gets its new tree) and
// records rolled_forward; if some root's stage is gone it rolls all back
// instead, and if neither way works for every root it touches nothing.
// The reverting phase is made durable before the first undo, by a live
// restore and by recovery alike. Both decisions look at what is at the live, stage
// and old names and compare inodes, so they work from any state a crash
// leaves and can themselves be interrupted and re-run.
//
// # Operations
//
// Every create, verify, rollback, emergency and cleanup writes an
// Operation record. Records stay under the store's 512 KiB limit: long plan
// lists and problem lists are truncated in the stored copy (the counts stay
// exact), and hook output is kept to its last 4 KiB.
package restore
