package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/spf13/cobra"
)

func networkCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "network", Short: "Manage networks"}
	cmd.AddCommand(networkCreate(g), networkLs(g), networkInspect(g), networkConnect(g),
		networkDisconnect(g), networkRm(g), networkPrune(g))
	return cmd
}

// createFlags are network create's flags as typed.
type createFlags struct {
	driver, ipamDriver             string
	subnets, gateways, ranges, aux []string
	ipv6, internal, attachable     bool
	opts, labels                   []string
}

// request turns the flags into the API's request, pairing each --gateway, --ip-range and
// --aux-address with the --subnet that holds it (docker's rule).
func (f createFlags) request(name string) (api.NetworkCreate, error) {
	req := api.NetworkCreate{Name: name, Driver: f.driver, EnableIPv6: f.ipv6, Internal: f.internal, Attachable: f.attachable}
	var err error
	if req.Options, err = api.ParseKeyValues("opt", f.opts); err != nil {
		return req, err
	}
	if req.Labels, err = api.ParseKeyValues("label", f.labels); err != nil {
		return req, err
	}
	aux, err := api.ParseAuxAddresses(f.aux)
	if err != nil {
		return req, err
	}
	if len(f.subnets) == 0 {
		if len(f.gateways)+len(f.ranges)+len(aux) > 0 {
			return req, api.Invalid("subnet", "", "--gateway, --ip-range and --aux-address need a --subnet")
		}
		if f.ipamDriver != "" {
			req.IPAM = &api.IPAM{Driver: f.ipamDriver}
		}
		return req, nil
	}
	req.IPAM = &api.IPAM{Driver: f.ipamDriver}
	prefixes := make([]netip.Prefix, len(f.subnets))
	for i, s := range f.subnets {
		if prefixes[i], err = api.ParsePrefix("subnet", s); err != nil {
			return req, err
		}
		req.IPAM.Config = append(req.IPAM.Config, api.IPAMConfig{Subnet: s})
	}
	holder := func(field string, a netip.Addr, v string) (*api.IPAMConfig, error) {
		for i, p := range prefixes {
			if p.Contains(a) {
				return &req.IPAM.Config[i], nil
			}
		}
		return nil, api.Invalid(field, v, "in no --subnet given")
	}
	for _, gw := range f.gateways {
		a, err := api.ParseAddr("gateway", gw)
		if err != nil {
			return req, err
		}
		c, err := holder("gateway", a, gw)
		if err != nil {
			return req, err
		}
		if c.Gateway != "" {
			return req, api.Invalid("gateway", gw, "a second gateway for subnet "+c.Subnet)
		}
		c.Gateway = gw
	}
	for _, r := range f.ranges {
		p, err := api.ParsePrefix("ip-range", r)
		if err != nil {
			return req, err
		}
		c, err := holder("ip-range", p.Addr(), r)
		if err != nil {
			return req, err
		}
		if c.IPRange != "" {
			return req, api.Invalid("ip-range", r, "a second range for subnet "+c.Subnet)
		}
		c.IPRange = r
	}
	for _, k := range slices.Sorted(maps.Keys(aux)) {
		a, _ := api.ParseAddr("aux-address", aux[k])
		c, err := holder("aux-address", a, k+"="+aux[k])
		if err != nil {
			return req, err
		}
		if c.AuxiliaryAddresses == nil {
			c.AuxiliaryAddresses = map[string]string{}
		}
		c.AuxiliaryAddresses[k] = aux[k]
	}
	return req, nil
}

func networkCreate(g *globals) *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] NETWORK",
		Short: "Create a network",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(args[0])
			if err != nil {
				return err
			}
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				out, err := cl.NetworkCreate(ctx, req)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), out.ID)
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.driver, "driver", "d", "bridge", "driver that manages the network")
	fl.StringVar(&f.ipamDriver, "ipam-driver", "", "IPAM driver (default \"default\")")
	fl.StringArrayVar(&f.subnets, "subnet", nil, "subnet in CIDR form (repeatable: one IPv4, one IPv6)")
	fl.StringArrayVar(&f.gateways, "gateway", nil, "gateway of a subnet")
	fl.StringArrayVar(&f.ranges, "ip-range", nil, "allocate container addresses from this range of a subnet")
	fl.StringArrayVar(&f.aux, "aux-address", nil, "address the IPAM driver must not hand out, name=addr")
	fl.BoolVar(&f.ipv6, "ipv6", false, "enable IPv6")
	fl.BoolVar(&f.internal, "internal", false, "no access to the outside")
	fl.BoolVar(&f.attachable, "attachable", false, "mark the network attachable")
	fl.StringArrayVarP(&f.opts, "opt", "o", nil, "driver option, key=value (e.g. com.docker.network.bridge.enable_icc=false)")
	fl.StringArrayVar(&f.labels, "label", nil, "metadata, key=value")
	return cmd
}

// networkRow is a line of network ls, with docker's field names for --format.
type networkRow struct {
	ID, Name, Driver, Scope string
	IPv6, Internal          bool
	Labels, CreatedAt       string
}

var networkHeader = map[string]string{"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
	"IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS", "CreatedAt": "CREATED AT"}

// networkFilter is docker's --filter: the same key given twice is an "or", keys "and".
type networkFilter map[string][]string

func parseNetworkFilters(fs []string) (networkFilter, error) {
	out := networkFilter{}
	for _, f := range fs {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, api.Invalid("filter", f, "want key=value")
		}
		switch k {
		case "driver", "name", "label", "id", "scope", "type":
		default:
			return nil, api.Invalid("filter", f, "unknown key: want driver, name, label, id, scope or type")
		}
		out[k] = append(out[k], v)
	}
	return out, nil
}

func (f networkFilter) match(n api.NetworkInspect) bool {
	any := func(key string, ok func(string) bool) bool {
		vs, given := f[key]
		return !given || slices.ContainsFunc(vs, ok)
	}
	builtin := n.Name == "bridge" || n.Name == "host" || n.Name == "none"
	return any("driver", func(v string) bool { return n.Driver == v }) &&
		any("name", func(v string) bool { return strings.Contains(n.Name, v) }) &&
		any("id", func(v string) bool { return strings.HasPrefix(n.ID, v) }) &&
		any("scope", func(v string) bool { return n.Scope == v }) &&
		any("type", func(v string) bool { return (v == "builtin") == builtin && (v == "builtin" || v == "custom") }) &&
		any("label", func(v string) bool {
			k, want, hasValue := strings.Cut(v, "=")
			got, ok := n.Labels[k]
			return ok && (!hasValue || got == want)
		})
}

func networkLs(g *globals) *cobra.Command {
	var (
		filters        []string
		format         string
		quiet, noTrunc bool
	)
	cmd := &cobra.Command{
		Use:     "ls [OPTIONS]",
		Aliases: []string{"list"},
		Short:   "List networks",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := parseNetworkFilters(filters)
			if err != nil {
				return err
			}
			if format == "" {
				format = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"
			}
			if quiet {
				format = "{{.ID}}"
			}
			tmpl, table, err := parseFormat(format)
			if err != nil {
				return err
			}
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				nets, err := cl.NetworkList(ctx)
				if err != nil {
					return err
				}
				var rows []networkRow
				for _, n := range nets {
					if !f.match(n) {
						continue
					}
					id := n.ID
					if !noTrunc && len(id) > 12 {
						id = id[:12]
					}
					var labels []string
					for _, k := range slices.Sorted(maps.Keys(n.Labels)) {
						labels = append(labels, k+"="+n.Labels[k])
					}
					rows = append(rows, networkRow{ID: id, Name: n.Name, Driver: n.Driver, Scope: n.Scope, IPv6: n.EnableIPv6,
						Internal: n.Internal, Labels: strings.Join(labels, ","), CreatedAt: n.Created.Format(time.DateTime + " -0700 MST")})
				}
				return printFormatted(cmd.OutOrStdout(), tmpl, table, networkHeader, rows)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&filters, "filter", "f", nil, "filter: driver=, name=, label=KEY[=VALUE], id=, scope=, type=custom|builtin")
	fl.StringVar(&format, "format", "", "Go template, \"table TEMPLATE\" or \"json\"")
	fl.BoolVarP(&quiet, "quiet", "q", false, "only IDs")
	fl.BoolVar(&noTrunc, "no-trunc", false, "full IDs")
	return cmd
}

// inspectEach fetches each name and prints them as a JSON array, or with the template;
// names that fail are reported and make the command fail, after the others are printed.
func inspectEach[T any](cmd *cobra.Command, format string, names []string, get func(string) (T, error)) error {
	var (
		items []T
		errs  []error
	)
	for _, n := range names {
		it, err := get(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		items = append(items, it)
	}
	if format == "" {
		if items == nil {
			items = []T{}
		}
		if err := printJSON(cmd.OutOrStdout(), items); err != nil {
			return err
		}
	} else {
		tmpl, _, err := parseFormat(format)
		if err != nil {
			return err
		}
		if err := printFormatted(cmd.OutOrStdout(), tmpl, false, nil, items); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

func networkInspect(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:               "inspect [OPTIONS] NETWORK...",
		Short:             "Show networks in docker network inspect's shape",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeNames(g, false),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				return inspectEach(cmd, format, args, func(n string) (api.NetworkInspect, error) { return cl.NetworkInspect(ctx, n) })
			})
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "", "Go template (json, join, index, range, ...)")
	return cmd
}

func networkConnect(g *globals) *cobra.Command {
	var req api.Connect
	cmd := &cobra.Command{
		Use:               "connect [OPTIONS] NETWORK SANDBOX",
		Short:             "Connect a sandbox to a network",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeNames(g, false),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Sandbox = args[1]
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				_, err := cl.NetworkConnect(ctx, args[0], req)
				return err
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.IPv4Address, "ip", "", "IPv4 address")
	fl.StringVar(&req.IPv6Address, "ip6", "", "IPv6 address")
	fl.StringArrayVar(&req.Aliases, "alias", nil, "extra name on the network")
	fl.StringVar(&req.IfName, "ifname", "", "interface name in the sandbox (default the next ethN)")
	return cmd
}

func networkDisconnect(g *globals) *cobra.Command {
	var req api.Disconnect
	cmd := &cobra.Command{
		Use:               "disconnect [OPTIONS] NETWORK SANDBOX",
		Short:             "Disconnect a sandbox from a network",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeNames(g, false),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Sandbox = args[1]
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				return cl.NetworkDisconnect(ctx, args[0], req)
			})
		},
	}
	cmd.Flags().BoolVarP(&req.Force, "force", "f", false, "succeed when the sandbox is not connected")
	return cmd
}

func networkRm(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "rm NETWORK...",
		Aliases:           []string{"remove"},
		Short:             "Remove networks",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeNames(g, false),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				var errs []error
				for _, n := range args {
					if err := cl.NetworkRemove(ctx, n); err != nil {
						errs = append(errs, err)
						continue
					}
					fmt.Fprintln(cmd.OutOrStdout(), n)
				}
				return errors.Join(errs...)
			})
		},
	}
}

func networkPrune(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "prune [OPTIONS]",
		Short: "Remove every network no sandbox uses (not bridge, host or none)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !force {
				fmt.Fprint(cmd.OutOrStdout(), "WARNING! This will remove all custom networks not used by at least one sandbox.\nAre you sure you want to continue? [y/N] ")
				line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
					return nil
				}
			}
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				rep, err := cl.NetworkPrune(ctx)
				if err != nil {
					return err
				}
				if len(rep.NetworksDeleted) > 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "Deleted Networks:")
					for _, n := range rep.NetworksDeleted {
						fmt.Fprintln(cmd.OutOrStdout(), n)
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	return cmd
}
