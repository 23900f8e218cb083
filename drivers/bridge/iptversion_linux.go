package bridge

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	cnmipt "github.com/cnmkit/cnm/internal/iptables"
	"github.com/cnmkit/cnm/netns"
	goipt "github.com/coreos/go-iptables/iptables"
)

// detectIPTables finds what New reports in [Driver.IPTables]: the version of the iptables
// binary and whether it takes --random-fully, with github.com/coreos/go-iptables (which runs
// "iptables --version"); the mode (backend) of the iptables-restore the driver writes with, from
// the binary it resolves to (xtables-nft-multi or xtables-legacy-multi); and, with one save of
// the other backend in the host namespace ns per family, whether that backend holds FORWARD
// or nat rules. It changes nothing; the rules themselves keep going through one
// iptables-restore transaction per operation.
func detectIPTables(ctx context.Context, ns *netns.NS, fw *cnmipt.Runner) IPTablesInfo {
	var info IPTablesInfo
	if fw.Check() != nil {
		return info
	}
	if ipt, err := goipt.New(); err == nil {
		v1, v2, v3 := ipt.GetIptablesVersion()
		info.Version = fmt.Sprintf("%d.%d.%d", v1, v2, v3)
		info.RandomFully = ipt.HasRandomFully()
	}
	if target, err := filepath.EvalSymlinks(fw.RestorePath()); err == nil {
		switch base := filepath.Base(target); {
		case strings.Contains(base, "nft"):
			info.Mode = ModeNFTables
		case strings.Contains(base, "legacy"):
			info.Mode = ModeLegacy
		}
	}
	other := map[string]string{ModeNFTables: "legacy", ModeLegacy: "nft"}[info.Mode]
	if other == "" {
		return info
	}
	conflict := &BackendConflictError{Mode: info.Mode, Other: map[string]string{"legacy": ModeLegacy, "nft": ModeNFTables}[other]}
	for _, v6 := range []bool{false, true} {
		r := cnmipt.NewBackend(ns, v6, other)
		if r.Check() != nil {
			continue
		}
		save, err := r.Save(ctx)
		if err != nil {
			continue
		}
		tables, err := cnmipt.Parse(save)
		if err != nil {
			continue
		}
		family := "IPv4"
		if v6 {
			family = "IPv6"
		}
		if f := tables[tableFilter]; f != nil {
			if p := f.Policy("FORWARD"); p != "" && p != "ACCEPT" {
				conflict.Found = append(conflict.Found, fmt.Sprintf("%s FORWARD policy %s", family, p))
			}
			if n := len(f.ChainRules("FORWARD")); n > 0 {
				conflict.Found = append(conflict.Found, fmt.Sprintf("%d %s FORWARD rules", n, family))
			}
		}
		if nat := tables[tableNAT]; nat != nil {
			n := 0
			for c := range nat.Chains {
				n += len(nat.ChainRules(c))
			}
			if n > 0 {
				conflict.Found = append(conflict.Found, fmt.Sprintf("%d %s nat rules", n, family))
			}
		}
	}
	if len(conflict.Found) > 0 {
		info.OtherBackend = conflict
	}
	return info
}
