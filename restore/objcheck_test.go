package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testObjects fills a store with n objects of the given sizes (cycled)
// and returns them as checks.
func testObjects(t testing.TB, s *objectStore, n int, sizes ...int) []objectCheck {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	objs := make([]objectCheck, n)
	for i := range objs {
		b := make([]byte, sizes[i%len(sizes)])
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		d, size, err := s.add(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		objs[i] = objectCheck{digest: d, size: size}
	}
	return objs
}

// TestVerifyObjectsFaults: every fault an object can have is reported
// once, with its exact message, whatever its size (some empty, some
// bigger than the read buffer).
func TestVerifyObjectsFaults(t *testing.T) {
	const mid = 64 << 10
	s, err := openObjectStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	objs := testObjects(t, s, 3*64+5, 0, 1, 100, 4096, mid-1, mid, 200<<10)
	overwrite := func(o objectCheck, b []byte) { overwriteObject(t, s, o.digest, b) }
	content := func(o objectCheck) []byte {
		b, err := os.ReadFile(s.path(o.digest))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := map[int]string{}
	fault := func(i int, msg string, f func(o objectCheck)) {
		f(objs[i])
		want[i] = msg
	}
	fault(2, "corrupt: content hashes to", func(o objectCheck) { // small, same size
		b := content(o)
		b[0] ^= 1
		overwrite(o, b)
	})
	fault(3, "missing", func(o objectCheck) { os.Remove(s.path(o.digest)) })
	fault(10, "corrupt: content hashes to", func(o objectCheck) { overwrite(o, append(content(o), 'x')) }) // grew
	fault(17, "corrupt: content hashes to", func(o objectCheck) { b := content(o); overwrite(o, b[:len(b)-1]) })
	fault(24, "too many levels of symbolic links", func(o objectCheck) {
		tmp := s.path(o.digest) + ".real"
		os.Rename(s.path(o.digest), tmp)
		os.Symlink(tmp, s.path(o.digest))
	})
	fault(31, "is a directory", func(o objectCheck) {
		os.Remove(s.path(o.digest))
		os.Mkdir(s.path(o.digest), 0o755)
	})
	// Intact content under the wrong size in the manifest.
	objs[38].size--
	want[38] = fmt.Sprintf("has %d bytes, manifest says %d", objs[38].size+1, objs[38].size)
	objs[45].size++
	want[45] = fmt.Sprintf("has %d bytes, manifest says %d", objs[45].size-1, objs[45].size)
	objs[52].digest = strings.Repeat("z", 64)
	want[52] = "invalid object name"
	fault(62, "corrupt: content hashes to", func(o objectCheck) { // big
		b := content(o)
		b[len(b)-1] ^= 1
		overwrite(o, b)
	})
	fault(12, "corrupt: content hashes to", func(o objectCheck) { overwrite(o, append(content(o), 'x')) }) // exactly mid
	objs[67].sizeOnly = true
	objs[67].size++
	want[67] = "manifest says"
	objs[74].sizeOnly = true // intact, size only
	if objs[62].size < mid || objs[3].size >= mid {
		t.Fatalf("sizes: %d %d", objs[62].size, objs[3].size)
	}

	var mu sync.Mutex
	seen := map[int]int{}
	got := map[int]error{}
	missing := map[int]bool{}
	err = s.verifyObjects(context.Background(), 2, objs, func(i int, m bool, err error) {
		mu.Lock()
		defer mu.Unlock()
		seen[i]++
		if err != nil {
			got[i] = err
			missing[i] = m
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range objs {
		if seen[i] != 1 {
			t.Errorf("object %d reported %d times", i, seen[i])
		}
		switch {
		case want[i] == "" && got[i] != nil:
			t.Errorf("object %d (size %d): unexpected %v", i, objs[i].size, got[i])
		case want[i] != "" && (got[i] == nil || !strings.Contains(got[i].Error(), want[i])):
			t.Errorf("object %d (size %d): got %v, want %q", i, objs[i].size, got[i], want[i])
		}
		if missing[i] != (i == 3) {
			t.Errorf("object %d: missing = %v", i, missing[i])
		}
	}
}

func TestVerifyObjectsCanceled(t *testing.T) {
	s, err := openObjectStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	objs := testObjects(t, s, 256, 10)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n := 0
	err = s.verifyObjects(ctx, 2, objs, func(int, bool, error) { n++ })
	if err != context.Canceled || n != 0 {
		t.Fatalf("canceled verify = %v after %d objects", err, n)
	}
}

func TestHashFileMatchesSHA256(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{0, 1, 255 << 10, 256 << 10, 256<<10 + 1, 1 << 20} {
		b := bytes.Repeat([]byte{byte(n)}, n)
		p := filepath.Join(dir, fmt.Sprint(n))
		os.WriteFile(p, b, 0o644)
		d, size, err := hashFile(p)
		sum := sha256.Sum256(b)
		if err != nil || size != int64(n) || d != hex.EncodeToString(sum[:]) {
			t.Errorf("hashFile(%d bytes) = %s, %d, %v", n, d, size, err)
		}
	}
}

// BenchmarkVerifyObjects re-hashes a store shaped like a source tree
// (mostly small objects).
func BenchmarkVerifyObjects(b *testing.B) {
	s, err := openObjectStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	// GOROOT/src's mix: 89% of objects under 16 KB (3 KB on average), 9%
	// from 16 to 64 KB, 2% larger (250 KB on average).
	var sizes []int
	for i := range 44 {
		sizes = append(sizes, 300+i*140)
	}
	sizes = append(sizes, 20<<10, 25<<10, 30<<10, 35<<10, 40<<10, 250<<10)
	objs := testObjects(b, s, 3000, sizes...)
	var total int64
	for _, o := range objs {
		total += o.size
	}
	b.SetBytes(total)
	for b.Loop() {
		err := s.verifyObjects(context.Background(), defaultWorkers(), objs, func(i int, _ bool, err error) {
			if err != nil {
				b.Fatal(err)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// TestObjectBatch: a batch's objects appear under their names only at
// commit, content is stored once, and abort or a stale-temp sweep leaves
// no temp files.
func TestObjectBatch(t *testing.T) {
	s, err := openObjectStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	temps := func() int {
		m, _ := filepath.Glob(filepath.Join(s.dir, ".tmp-*"))
		return len(m)
	}
	existing, _, err := s.add(strings.NewReader("already stored"))
	if err != nil {
		t.Fatal(err)
	}
	b := s.batch()
	var digests []string
	for _, c := range []string{"one", "two", "one", "already stored", ""} {
		d, n, err := b.add(strings.NewReader(c))
		if err != nil || n != int64(len(c)) {
			t.Fatalf("add(%q) = %d, %v", c, n, err)
		}
		digests = append(digests, d)
	}
	if digests[0] != digests[2] || digests[3] != existing {
		t.Fatalf("digests %v", digests)
	}
	for _, d := range []string{digests[0], digests[1], digests[4]} {
		if s.has(d) {
			t.Errorf("object %s visible before commit", d[:12])
		}
	}
	if n := temps(); n != 3 {
		t.Errorf("%d temp files before commit, want 3 (one, two, empty)", n)
	}
	if err := b.commit(); err != nil {
		t.Fatal(err)
	}
	c := s.checker()
	defer c.close()
	for i, d := range digests {
		if _, err := c.check(d, -1); err != nil {
			t.Errorf("object %d after commit: %v", i, err)
		}
	}
	if n := temps(); n != 0 {
		t.Errorf("%d temp files after commit", n)
	}

	b = s.batch()
	d, _, err := b.add(strings.NewReader("never committed"))
	if err != nil {
		t.Fatal(err)
	}
	b.abort()
	if s.has(d) || temps() != 0 {
		t.Errorf("after abort: object %v, %d temp files", s.has(d), temps())
	}

	// A create killed before its commit leaves temp files; cleanup removes
	// those older than its grace period, and only those.
	for _, age := range []time.Duration{2 * time.Hour, time.Minute} {
		p := filepath.Join(s.dir, fmt.Sprintf(".tmp-%d", age))
		os.WriteFile(p, []byte("orphan"), 0o440)
		os.Chtimes(p, time.Now().Add(-age), time.Now().Add(-age))
	}
	if n := s.removeStaleTemps(time.Now().Add(-time.Hour), true); n != 6 || temps() != 2 {
		t.Errorf("dry run: %d bytes, %d temp files left", n, temps())
	}
	if n := s.removeStaleTemps(time.Now().Add(-time.Hour), false); n != 6 || temps() != 1 {
		t.Errorf("sweep: %d bytes, %d temp files left, want 6 and 1", n, temps())
	}
}
