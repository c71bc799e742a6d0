package restore

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// objectRing reads a batch of small objects with io_uring: one
// io_uring_enter opens the whole batch, and a second reads every object
// into its own slot and closes it, where plain system calls take three an
// object. See objcheck.go for why that matters.
//
// Only what verification needs is here (openat, read and close, kernel
// 5.6 or newer). The ring and its buffers live outside the Go heap; the
// ring is used by one goroutine at a time and every batch is complete
// before read returns, so no request is in flight between calls.
type objectRing struct {
	fd, dir int
	// broken is set when io_uring_enter failed, after which requests may
	// still be in flight: the buffers are then never reused or unmapped.
	broken bool

	sqMem, cqMem, sqeMem []byte
	sqHead, sqTail       *uint32
	sqMask               uint32
	sqArray              unsafe.Pointer
	sqes                 unsafe.Pointer
	cqHead, cqTail       *uint32
	cqMask               uint32
	cqes                 unsafe.Pointer

	// mem holds the batch's names ("ab/<digest>\0", nameLen bytes each)
	// followed by its read slots (batchSlot bytes each).
	mem []byte
	fds [batchLen]int32
	res [batchLen]int32
}

// The kernel's io_uring ABI (include/uapi/linux/io_uring.h).
const (
	ringOpOpenat     = 18
	ringOpClose      = 19
	ringOpRead       = 22
	ringSQEHardlink  = 1 << 3
	ringEnterGetEvts = 1 << 0
	ringOffSQRing    = 0
	ringOffCQRing    = 0x8000000
	ringOffSQEs      = 0x10000000

	nameLen = 2 + 1 + 64 + 1
	// ringEntries holds a read and a close for every object of a batch.
	ringEntries = 2 * batchLen
)

type sqOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type ringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqOffsets
	cqOff                                                                  cqOffsets
}

type ringSQE struct {
	opcode   uint8
	flags    uint8
	ioprio   uint16
	fd       int32
	off      uint64
	addr     uint64
	len      uint32
	opFlags  uint32
	userData uint64
	bufIndex uint16
	pers     uint16
	fileIdx  uint32
	addr3    uint64
	_        uint64
}

type ringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// newObjectRing sets up a ring reading objects of the store in dir. It
// fails where the kernel lacks io_uring or a sandbox forbids it.
func newObjectRing(dir string) (r *objectRing, err error) {
	var p ringParams
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, ringEntries, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, errno
	}
	r = &objectRing{fd: int(fd), dir: -1}
	defer func() {
		if err != nil {
			r.close()
			r = nil
		}
	}()
	if r.dir, err = unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		return r, err
	}
	mmap := func(off int64, size int) ([]byte, error) {
		return unix.Mmap(r.fd, off, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	}
	if r.sqMem, err = mmap(ringOffSQRing, int(p.sqOff.array+p.sqEntries*4)); err != nil {
		return r, err
	}
	if r.cqMem, err = mmap(ringOffCQRing, int(p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(ringCQE{})))); err != nil {
		return r, err
	}
	if r.sqeMem, err = mmap(ringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(ringSQE{}))); err != nil {
		return r, err
	}
	if r.mem, err = unix.Mmap(-1, 0, batchLen*(nameLen+batchSlot), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return r, err
	}
	sq := unsafe.Pointer(&r.sqMem[0])
	r.sqHead = (*uint32)(unsafe.Add(sq, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(sq, p.sqOff.tail))
	r.sqMask = *(*uint32)(unsafe.Add(sq, p.sqOff.ringMask))
	r.sqArray = unsafe.Add(sq, p.sqOff.array)
	r.sqes = unsafe.Pointer(&r.sqeMem[0])
	cq := unsafe.Pointer(&r.cqMem[0])
	r.cqHead = (*uint32)(unsafe.Add(cq, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(cq, p.cqOff.tail))
	r.cqMask = *(*uint32)(unsafe.Add(cq, p.cqOff.ringMask))
	r.cqes = unsafe.Add(cq, p.cqOff.cqes)
	return r, nil
}

func (r *objectRing) close() {
	if !r.broken {
		for _, m := range [][]byte{r.mem, r.sqeMem, r.cqMem, r.sqMem} {
			if m != nil {
				unix.Munmap(m)
			}
		}
	}
	if r.dir >= 0 {
		unix.Close(r.dir)
	}
	unix.Close(r.fd)
}

// slot returns the buffer object k of the last batch was read into.
func (r *objectRing) slot(k int) []byte {
	off := batchLen*nameLen + k*batchSlot
	return r.mem[off : off+batchSlot]
}

// read opens the objects named by digests with flags and reads them
// (their expected sizes are below batchSlot) into slots 0..len-1. It
// returns for each the bytes read or a negative errno. Each is asked for
// one byte more than its size, so an object that grew reads size+1.
func (r *objectRing) read(digests []string, sizes []int64, flags int) ([]int32, error) {
	if r.broken {
		return nil, unix.EIO
	}
	n := len(digests)
	for k, d := range digests {
		name := r.mem[k*nameLen : (k+1)*nameLen]
		copy(name, d[:2])
		name[2] = '/'
		copy(name[3:], d)
		name[nameLen-1] = 0
		r.queue(ringSQE{
			opcode:   ringOpOpenat,
			fd:       int32(r.dir),
			addr:     uint64(uintptr(unsafe.Pointer(&name[0]))),
			opFlags:  uint32(flags),
			userData: uint64(k),
		})
	}
	if err := r.run(uint32(n), func(c *ringCQE) { r.fds[c.userData] = c.res }); err != nil {
		return nil, err
	}
	want := 0
	for k := 0; k < n; k++ {
		if r.fds[k] < 0 {
			r.res[k] = r.fds[k]
			continue
		}
		// The close is hard-linked to the read so it runs after it
		// whatever the read returns (an ordinary link would cancel it on
		// the short read that ends every object).
		r.queue(ringSQE{
			opcode:   ringOpRead,
			flags:    ringSQEHardlink,
			fd:       r.fds[k],
			addr:     uint64(uintptr(unsafe.Pointer(&r.slot(k)[0]))),
			len:      uint32(sizes[k] + 1),
			userData: uint64(k),
		})
		r.queue(ringSQE{opcode: ringOpClose, fd: r.fds[k], userData: 1 << 32})
		want += 2
	}
	err := r.run(uint32(want), func(c *ringCQE) {
		if c.userData>>32 == 0 {
			r.res[c.userData] = c.res
		}
	})
	return r.res[:n], err
}

// queue adds e to the submission queue.
func (r *objectRing) queue(e ringSQE) {
	tail := *r.sqTail
	i := tail & r.sqMask
	*(*ringSQE)(unsafe.Add(r.sqes, uintptr(i)*unsafe.Sizeof(ringSQE{}))) = e
	*(*uint32)(unsafe.Add(r.sqArray, uintptr(i)*4)) = i
	atomic.StoreUint32(r.sqTail, tail+1)
}

// run submits what is queued, waits for want completions and hands each
// to fn.
func (r *objectRing) run(want uint32, fn func(*ringCQE)) error {
	for got := uint32(0); got < want; {
		submit := atomic.LoadUint32(r.sqTail) - atomic.LoadUint32(r.sqHead)
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(submit), uintptr(want-got), ringEnterGetEvts, 0, 0)
		switch errno {
		case 0, unix.EINTR:
		default:
			r.broken = true
			return errno
		}
		head, tail := atomic.LoadUint32(r.cqHead), atomic.LoadUint32(r.cqTail)
		for ; head != tail; head++ {
			fn((*ringCQE)(unsafe.Add(r.cqes, uintptr(head&r.cqMask)*unsafe.Sizeof(ringCQE{}))))
			got++
		}
		atomic.StoreUint32(r.cqHead, head)
	}
	return nil
}
