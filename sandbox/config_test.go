package sandbox

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
)

// fakeSandbox is a Sandbox for Config.Share in validation tests.
type fakeSandbox struct{ Sandbox }

func (fakeSandbox) ID() string { return "other" }

func TestConfigValidate(t *testing.T) {
	good := func() Config {
		return Config{ID: "c1", RunDir: "/run/cnm", FilesDir: "/var/lib/cnm/c1"}
	}
	tests := []struct {
		name  string
		edit  func(*Config)
		field string // "" for valid
	}{
		{"valid", func(*Config) {}, ""},
		{"id 64 chars", func(c *Config) { c.ID = strings.Repeat("a", 64) }, ""},
		{"id with _.-", func(c *Config) { c.ID = "a_b.c-d" }, ""},
		{"empty id", func(c *Config) { c.ID = "" }, "sandbox id"},
		{"id 65 chars", func(c *Config) { c.ID = strings.Repeat("a", 65) }, "sandbox id"},
		{"id starts with dot", func(c *Config) { c.ID = ".x" }, "sandbox id"},
		{"id starts with dash", func(c *Config) { c.ID = "-x" }, "sandbox id"},
		{"id with slash", func(c *Config) { c.ID = "a/b" }, "sandbox id"},
		{"id dotdot", func(c *Config) { c.ID = ".." }, "sandbox id"},
		{"id with space", func(c *Config) { c.ID = "a b" }, "sandbox id"},
		{"bad mode", func(c *Config) { c.Mode = Mode(7) }, "mode"},
		{"namespace without run dir", func(c *Config) { c.RunDir = "" }, "run dir"},
		{"host without run dir", func(c *Config) { c.Mode, c.RunDir = ModeHost, "" }, ""},
		{"namespace with share", func(c *Config) { c.Share = fakeSandbox{} }, "share"},
		{"container without share", func(c *Config) { c.Mode = ModeContainer }, "share"},
		{"container with share", func(c *Config) { c.Mode, c.Share = ModeContainer, fakeSandbox{} }, ""},
		{"no files dir", func(c *Config) { c.FilesDir = "" }, "files dir"},
		{"files dir root", func(c *Config) { c.FilesDir = "//" }, "files dir"},
		{"hostname with space", func(c *Config) { c.Hostname = "a b" }, "hostname"},
		{"domainname with newline", func(c *Config) { c.Domainname = "a\nb" }, "domainname"},
		{"invalid dns", func(c *Config) { c.DNS = []netip.Addr{{}} }, "dns"},
		{"empty search", func(c *Config) { c.DNSSearch = []string{""} }, "dns search"},
		{"option with space", func(c *Config) { c.DNSOptions = []string{"ndots: 2"} }, "dns option"},
		{"extra host without name", func(c *Config) { c.ExtraHosts = []Host{{Addr: netip.MustParseAddr("192.0.2.1")}} }, "extra host"},
		{"extra host without addr", func(c *Config) { c.ExtraHosts = []Host{{Name: "db"}} }, "extra host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.edit(&c)
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			ipe, ok := errors.AsType[*errclass.InvalidParameterError](err)
			if !ok {
				t.Fatalf("Validate() = %v, want an *errclass.InvalidParameterError", err)
			}
			if ipe.Field != tt.field {
				t.Errorf("field = %q, want %q (error %v)", ipe.Field, tt.field, err)
			}
			if !errors.Is(err, errclass.ErrInvalidParameter) {
				t.Errorf("Validate() = %v, does not match ErrInvalidParameter", err)
			}
		})
	}
}

// TestNewInvalidConfig checks that New refuses a bad config before touching anything, so it
// needs no privilege.
func TestNewInvalidConfig(t *testing.T) {
	_, err := New(context.Background(), Config{ID: "../x", RunDir: t.TempDir(), FilesDir: t.TempDir()})
	ipe, ok := errors.AsType[*errclass.InvalidParameterError](err)
	if !ok || ipe.Field != "sandbox id" || ipe.Value != "../x" {
		t.Fatalf("New with a bad ID = %v, want an invalid sandbox id", err)
	}
	if _, _, err := Open(context.Background(), Config{ID: "x", FilesDir: "/tmp/x"}, nil); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Fatalf("Open without run dir = %v, want invalid parameter", err)
	}
	if err := RemoveNamespace(t.TempDir(), "../../etc"); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Fatalf("RemoveNamespace with a bad ID = %v, want invalid parameter", err)
	}
}

func TestValidateInterface(t *testing.T) {
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	tests := []struct {
		name  string
		cfg   InterfaceConfig
		field string
	}{
		{"in sandbox", InterfaceConfig{Name: "eth0", InSandbox: true, IPv4: p("10.0.0.2/24"), Gateway: a("10.0.0.1")}, ""},
		{"src name", InterfaceConfig{Name: "eth0", SrcName: "veth1", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}, ""},
		{"no src name", InterfaceConfig{Name: "eth0"}, "source name"},
		{"both", InterfaceConfig{Name: "eth0", InSandbox: true, SrcName: "veth1"}, "source name"},
		{"short mac", InterfaceConfig{Name: "eth0", InSandbox: true, MAC: net.HardwareAddr{1, 2}}, "mac"},
		{"ipv6 as ipv4", InterfaceConfig{Name: "eth0", InSandbox: true, IPv4: p("fd00::2/64")}, "ipv4"},
		{"ipv4 as ipv6", InterfaceConfig{Name: "eth0", InSandbox: true, IPv6: p("10.0.0.2/24")}, "ipv6"},
		{"mapped ipv6", InterfaceConfig{Name: "eth0", InSandbox: true, IPv6: p("::ffff:10.0.0.2/120")}, "ipv6"},
		{"ipv6 gateway in gateway", InterfaceConfig{Name: "eth0", InSandbox: true, Gateway: a("fd00::1")}, "gateway"},
		{"ipv4 gateway in ipv6", InterfaceConfig{Name: "eth0", InSandbox: true, GatewayIPv6: a("10.0.0.1")}, "ipv6 gateway"},
		{"route mixed families", InterfaceConfig{Name: "eth0", InSandbox: true, Routes: []Route{{Destination: p("10.1.0.0/16"), NextHop: a("fd00::1")}}}, "route"},
		{"route without destination", InterfaceConfig{Name: "eth0", InSandbox: true, Routes: []Route{{}}}, "route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateInterface(&tt.cfg)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("validateInterface() = %v, want nil", err)
				}
				return
			}
			ipe, ok := errors.AsType[*errclass.InvalidParameterError](err)
			if !ok || ipe.Field != tt.field {
				t.Fatalf("validateInterface() = %v, want invalid %s", err, tt.field)
			}
		})
	}
}

func TestValidIfname(t *testing.T) {
	for _, name := range []string{"eth0", "veth1234567890a", "a-b_c.d"} {
		if err := validIfname("name", name); err != nil {
			t.Errorf("validIfname(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{"", ".", "..", "a/b", "a:b", "a b", "veth1234567890ab"} {
		if err := validIfname("name", name); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("validIfname(%q) = %v, want invalid parameter", name, err)
		}
	}
}
