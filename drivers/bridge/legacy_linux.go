package bridge

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The getsockopt options of iptables-legacy (linux/netfilter_ipv4/ip_tables.h and
// netfilter_ipv6/ip6_tables.h: IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES and their IPv6 twins).
const (
	soGetInfo    = 64
	soGetEntries = 65
	nfAccept     = 1 // NF_ACCEPT
)

// legacyFamily is where one family's iptables-legacy tables are listed and read.
type legacyFamily struct {
	name    string // "ip" or "ip6"
	names   string // the file listing the family's tables in the namespace of the calling thread
	domain  int    // the socket's domain
	level   int    // the getsockopt level
	offTgt  int    // offset of target_offset in ipt_entry or ip6t_entry
	infoLen int    // sizeof(struct ipt_getinfo)
}

var legacyFamilies = []legacyFamily{
	{"ip", "/proc/thread-self/net/ip_tables_names", unix.AF_INET, unix.SOL_IP, 88, 84},
	{"ip6", "/proc/thread-self/net/ip6_tables_names", unix.AF_INET6, unix.SOL_IPV6, 140, 84},
}

// legacyRulesInUse reports whether the current network namespace has iptables-legacy rules
// in use, and names the first table found so: a table with a rule of its own, or a built-in
// chain whose policy is not ACCEPT. Only the tables the kernel lists as made in the namespace
// are read (reading another would make it). It must run in the host namespace.
func legacyRulesInUse() (string, error) {
	for _, fam := range legacyFamilies {
		tables, err := readLines(fam.names)
		if err != nil {
			if os.IsNotExist(err) { // no ip_tables (or ip6_tables) in the kernel
				continue
			}
			return "", err
		}
		if len(tables) == 0 {
			continue
		}
		fd, err := unix.Socket(fam.domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return "", fmt.Errorf("socket for iptables-legacy: %w", err)
		}
		used, err := fam.inUse(fd, tables)
		unix.Close(fd)
		if used != "" || err != nil {
			return used, err
		}
	}
	return "", nil
}

// inUse reads tables through fd and returns the first one in use ("ip filter"), if any.
func (fam legacyFamily) inUse(fd int, tables []string) (string, error) {
	for _, name := range tables {
		info := make([]byte, fam.infoLen)
		copy(info, name)
		if err := getsockopt(fd, fam.level, soGetInfo, info); err != nil {
			return "", fmt.Errorf("read iptables-legacy table %s %s: %w", fam.name, name, err)
		}
		le := binary.NativeEndian
		validHooks := le.Uint32(info[32:])
		numEntries := le.Uint32(info[76:])
		size := le.Uint32(info[80:])
		// An untouched table holds its built-in chains' policies and the closing error entry.
		if int(numEntries) > bits.OnesCount32(validHooks)+1 {
			return fam.name + " " + name, nil
		}
		const head = 40 // struct ipt_get_entries: name[32], size, padding to the 8-aligned entries
		entries := make([]byte, head+int(size))
		copy(entries, name)
		le.PutUint32(entries[32:], size)
		if err := getsockopt(fd, fam.level, soGetEntries, entries); err != nil {
			return "", fmt.Errorf("read iptables-legacy table %s %s: %w", fam.name, name, err)
		}
		for h := range 5 {
			if validHooks&(1<<h) == 0 {
				continue
			}
			at := head + int(le.Uint32(info[56+4*h:])) // underflow[h]: the policy's entry
			if at+fam.offTgt+2 > len(entries) {
				continue
			}
			tgt := at + int(le.Uint16(entries[at+fam.offTgt:]))
			if tgt+36 > len(entries) {
				continue
			}
			// A standard target (32-byte header) whose verdict is -NF_ACCEPT-1 accepts.
			if verdict := int32(le.Uint32(entries[tgt+32:])); verdict != -nfAccept-1 {
				return fam.name + " " + name, nil
			}
		}
	}
	return "", nil
}

// getsockopt is getsockopt(2) with buf as the in-and-out value.
func getsockopt(fd, level, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// readLines returns the non-empty lines of the file at path.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := sc.Text(); l != "" {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}
