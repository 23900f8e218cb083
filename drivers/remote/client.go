package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/remote/wire"
	"github.com/cnmkit/cnm/internal/errclass"
)

// DefaultSocketDirs returns the directories searched first, for NAME.sock and
// NAME/NAME.sock, as Docker does: /run/docker/plugins.
func DefaultSocketDirs() []string { return []string{"/run/docker/plugins"} }

// DefaultSpecDirs returns the directories searched next, each for NAME.spec, NAME/NAME.spec,
// NAME.json and NAME/NAME.json, as Docker does: /etc/docker/plugins, /usr/lib/docker/plugins.
func DefaultSpecDirs() []string { return []string{"/etc/docker/plugins", "/usr/lib/docker/plugins"} }

// DefaultTimeout bounds each call to a plugin when [Config].Timeout is zero.
const DefaultTimeout = 30 * time.Second

// maxAnswer bounds the size of a plugin's answer.
const maxAnswer = 16 << 20

// Config says which plugin to use and how to reach it.
type Config struct {
	// Name is the plugin's name: the NAME of NAME.sock or NAME.spec, and the driver type of the
	// network options the driver parses. Required.
	Name string
	// Addr, when set, is the plugin's address and discovery is skipped: "unix:///path/x.sock"
	// or "tcp://host:port" (plain HTTP).
	Addr string
	// SocketDirs are the directories searched for the plugin's socket. Nil means
	// DefaultSocketDirs(); an empty, non-nil slice searches none.
	SocketDirs []string
	// SpecDirs are the directories searched for its spec file. Nil means DefaultSpecDirs(); an
	// empty, non-nil slice searches none.
	SpecDirs []string
	// Timeout bounds each call to the plugin, on top of the caller's context. Zero means
	// DefaultTimeout.
	Timeout time.Duration
	// Logger receives the client's logs. Nil means none.
	Logger *slog.Logger
}

// client is a connection to one plugin: the HTTP client and the plugin's address.
type client struct {
	name    string
	addr    string // as found, for errors
	http    *http.Client
	base    string // "http://plugin" or "http://host:port"
	timeout time.Duration
	log     *slog.Logger
}

// Discover returns the address of the plugin name: the first of NAME.sock and NAME/NAME.sock
// that is a socket in socketDirs, else the address read from the first of NAME.spec,
// NAME/NAME.spec, NAME.json and NAME/NAME.json found in specDirs (in that order per directory).
// Nil dirs mean the defaults. It fails with an error matching cnm.ErrNotFound when there is
// no such plugin, and with one matching cnm.ErrNotSupported for a spec with TLS.
func Discover(name string, socketDirs, specDirs []string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	if socketDirs == nil {
		socketDirs = DefaultSocketDirs()
	}
	if specDirs == nil {
		specDirs = DefaultSpecDirs()
	}
	for _, dir := range socketDirs {
		for _, p := range pluginPaths(dir, name, ".sock") {
			if fi, err := os.Stat(p); err == nil && fi.Mode()&fs.ModeSocket != 0 {
				return "unix://" + p, nil
			}
		}
	}
	for _, dir := range specDirs {
		for _, ext := range []string{".spec", ".json"} {
			for _, p := range pluginPaths(dir, name, ext) {
				b, err := os.ReadFile(p)
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				if err != nil {
					return "", &errclass.UnavailableError{What: "docker plugin spec " + p, Err: err}
				}
				return readSpec(p, ext, b)
			}
		}
	}
	return "", &errclass.NotFoundError{Kind: "docker plugin", Name: name,
		Err: fmt.Errorf("no socket %s.sock in %s and no spec %s.spec or %s.json in %s",
			name, strings.Join(socketDirs, ", "), name, name, strings.Join(specDirs, ", "))}
}

func pluginPaths(dir, name, ext string) []string {
	return []string{filepath.Join(dir, name+ext), filepath.Join(dir, name, name+ext)}
}

// readSpec returns the address in the spec file p: a URL (.spec) or a JSON object with Addr
// (.json).
func readSpec(p, ext string, b []byte) (string, error) {
	addr := strings.TrimSpace(string(b))
	if ext == ".json" {
		var spec struct {
			Name      string
			Addr      string
			TLSConfig *json.RawMessage
		}
		if err := json.Unmarshal(b, &spec); err != nil {
			return "", &errclass.InvalidParameterError{Field: "docker plugin spec", Value: p, Reason: "not a JSON spec", Err: err}
		}
		if spec.TLSConfig != nil && string(*spec.TLSConfig) != "null" {
			return "", &errclass.NotSupportedError{What: "TLS of docker plugin spec " + p}
		}
		addr = spec.Addr
	}
	if _, _, err := parseAddr(addr); err != nil {
		return "", fmt.Errorf("docker plugin spec %s: %w", p, err)
	}
	return addr, nil
}

// parseAddr splits a plugin address into the dial network and address.
func parseAddr(addr string) (network, address string, err error) {
	u, err := url.Parse(addr)
	if err != nil {
		return "", "", &errclass.InvalidParameterError{Field: "docker plugin address", Value: addr, Reason: "not a URL", Err: err}
	}
	switch u.Scheme {
	case "unix":
		p := u.Path
		if p == "" {
			p = u.Host
		}
		if p == "" {
			return "", "", errclass.Invalid("docker plugin address", addr, "no socket path")
		}
		return "unix", p, nil
	case "tcp", "http":
		if u.Host == "" {
			return "", "", errclass.Invalid("docker plugin address", addr, "no host:port")
		}
		return "tcp", u.Host, nil
	case "https":
		return "", "", &errclass.NotSupportedError{What: "docker plugin over TLS (" + addr + ")"}
	}
	return "", "", errclass.Invalid("docker plugin address", addr, `want unix:///path or tcp://host:port`)
}

func checkName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return errclass.Invalid("docker plugin name", name, "want a non-empty name without '/'")
	}
	return nil
}

// dial finds the plugin of cfg, activates it and checks that it implements iface.
func dial(ctx context.Context, cfg Config, iface string) (*client, error) {
	if err := errclass.CheckContext(ctx); err != nil {
		return nil, err
	}
	if err := checkName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.Timeout < 0 {
		return nil, errclass.Invalid("timeout", cfg.Timeout.String(), "negative")
	}
	addr := cfg.Addr
	if addr == "" {
		var err error
		if addr, err = Discover(cfg.Name, cfg.SocketDirs, cfg.SpecDirs); err != nil {
			return nil, err
		}
	}
	network, address, err := parseAddr(addr)
	if err != nil {
		return nil, err
	}
	c := &client{
		name:    cfg.Name,
		addr:    addr,
		base:    "http://plugin.cnm.localhost",
		timeout: cfg.Timeout,
		log:     cfg.Logger,
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if network == "tcp" {
		c.base = "http://" + address
	}
	var d net.Dialer
	c.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, address)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
	var m wire.Manifest
	if err := c.call(ctx, wire.Activate, nil, &m); err != nil {
		c.close()
		return nil, err
	}
	if !slices.Contains(m.Implements, iface) {
		c.close()
		return nil, &errclass.NotSupportedError{What: fmt.Sprintf("docker plugin %s (%s)", cfg.Name, addr),
			Err: fmt.Errorf("implements %q, not %s", m.Implements, iface)}
	}
	return c, nil
}

func (c *client) close() { c.http.CloseIdleConnections() }

// errMsger is an answer with an error field.
type errMsger interface{ ErrMsg() string }

// call posts in (nil: an empty body) to the method and decodes the answer into out (nil: it
// is ignored). An answer with an error, or a status other than 200, returns a *PluginError;
// a plugin that cannot be reached, an *UnavailableError.
func (c *client) call(ctx context.Context, method string, in, out any) error {
	var body io.Reader = http.NoBody
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("docker plugin %s: %s: encode request: %w", c.name, method, err)
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/"+method, body)
	if err != nil {
		return fmt.Errorf("docker plugin %s: %s: %w", c.name, method, err)
	}
	req.Header.Set("Accept", wire.MediaType)
	req.Header.Set("Content-Type", wire.MediaType)
	resp, err := c.http.Do(req)
	if err != nil {
		return &errclass.UnavailableError{What: fmt.Sprintf("docker plugin %s (%s)", c.name, c.addr), Err: fmt.Errorf("%s: %w", method, err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err == nil && len(b) > maxAnswer {
		err = fmt.Errorf("answer larger than %d bytes", maxAnswer)
	}
	if err != nil {
		return &errclass.UnavailableError{What: fmt.Sprintf("docker plugin %s (%s)", c.name, c.addr), Err: fmt.Errorf("%s: read answer: %w", method, err)}
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Err, Error string }
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil {
			msg = cmpOr(e.Err, e.Error, msg)
		}
		if msg == "" {
			msg = resp.Status
		}
		return &PluginError{Plugin: c.name, Method: method, Status: resp.StatusCode, Msg: msg}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return &PluginError{Plugin: c.name, Method: method, Status: resp.StatusCode, Msg: "malformed answer: " + err.Error(), malformed: true}
	}
	if e, ok := out.(errMsger); ok && e.ErrMsg() != "" {
		return &PluginError{Plugin: c.name, Method: method, Status: resp.StatusCode, Msg: e.ErrMsg()}
	}
	return nil
}

func cmpOr(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// PluginError is an error a plugin answered, or an answer that could not be decoded. It
// matches a cnm error class with errors.Is when the protocol or the message says which: a
// status 404 (a method the plugin does not have) matches cnm.ErrNotSupported, a malformed
// answer cnm.ErrUnavailable, and otherwise the first of these phrases in the message (case
// folded) picks the class: "invalid", "bad ", "malformed" (ErrInvalidParameter); "already
// exists" (ErrAlreadyExists); "not found", "no such", "does not exist", "unknown"
// (ErrNotFound); "conflict", "in use", "overlap" (ErrConflict); "not supported", "not
// implemented", "unsupported" (ErrNotSupported); "exhausted", "no available", "unavailable",
// "timeout", "timed out" (ErrUnavailable). A message with none of them matches no class.
type PluginError struct {
	Plugin    string // the plugin's name
	Method    string // "NetworkDriver.CreateNetwork"
	Status    int    // the HTTP status; 200 when the error came in a successful answer
	Msg       string // the plugin's message (the Err field)
	malformed bool
}

func (e *PluginError) Error() string {
	return fmt.Sprintf("docker plugin %s: %s: %s", e.Plugin, e.Method, e.Msg)
}

// Is reports whether target is the error class of e (see [PluginError]).
func (e *PluginError) Is(target error) bool { return target != nil && target == e.class() }

var classPhrases = []struct {
	class   error
	phrases []string
}{
	{errclass.ErrInvalidParameter, []string{"invalid", "bad ", "malformed"}},
	{errclass.ErrAlreadyExists, []string{"already exists"}},
	{errclass.ErrNotFound, []string{"not found", "no such", "does not exist", "unknown"}},
	{errclass.ErrConflict, []string{"conflict", "in use", "overlap"}},
	{errclass.ErrNotSupported, []string{"not supported", "not implemented", "unsupported"}},
	{errclass.ErrUnavailable, []string{"exhausted", "no available", "unavailable", "timeout", "timed out"}},
}

func (e *PluginError) class() error {
	switch {
	case e.malformed:
		return errclass.ErrUnavailable
	case e.Status == http.StatusNotFound:
		return errclass.ErrNotSupported
	}
	msg := strings.ToLower(e.Msg)
	for _, c := range classPhrases {
		for _, p := range c.phrases {
			if strings.Contains(msg, p) {
				return c.class
			}
		}
	}
	return nil
}

// notImplemented reports whether err is a plugin's answer that it has no such method.
func notImplemented(err error) bool {
	var pe *PluginError
	return errors.As(err, &pe) && pe.Status == http.StatusNotFound
}

// gone reports whether err says the object is missing already (a converging delete).
func gone(err error) bool {
	var pe *PluginError
	return errors.As(err, &pe) && !notImplemented(err) && errors.Is(err, drivers.ErrNotFound)
}
