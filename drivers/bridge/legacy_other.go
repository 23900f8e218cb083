//go:build !linux

package bridge

// legacyRulesInUse finds no iptables-legacy rules: there are none off Linux.
func legacyRulesInUse() (string, error) { return "", nil }
