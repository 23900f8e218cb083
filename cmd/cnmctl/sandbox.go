package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/spf13/cobra"
)

func sandboxCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "sandbox", Short: "Manage sandboxes (a container's network stack)"}
	cmd.AddCommand(sandboxCreate(g), sandboxLs(g), sandboxInspect(g), sandboxRm(g))
	return cmd
}

func sandboxCreate(g *globals) *cobra.Command {
	var (
		req            api.SandboxCreate
		ports, exposes []string
	)
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] NAME",
		Short: "Create a sandbox and connect it as --net says (the default bridge network by default)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			for _, p := range ports {
				bs, err := api.ParsePortSpec(p)
				if err != nil {
					return err
				}
				req.Ports = append(req.Ports, bs...)
			}
			for _, e := range exposes {
				b, err := api.ParseExpose(e)
				if err != nil {
					return err
				}
				req.Expose = append(req.Expose, b)
			}
			if req.PublishAll && len(req.Expose) == 0 {
				return api.Invalid("publish-all", "", "-P publishes the --expose ports: give at least one")
			}
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				if _, err := cl.SandboxCreate(ctx, req); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), req.Name)
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Network, "net", "", "NETWORK, none, host or container:NAME (default bridge)")
	fl.StringVar(&req.Network, "network", "", "same as --net")
	fl.StringArrayVarP(&ports, "publish", "p", nil, "publish a port: [hostIP:][hostPort:]containerPort[/proto]")
	fl.BoolVarP(&req.PublishAll, "publish-all", "P", false, "publish the --expose ports on ephemeral host ports")
	fl.StringArrayVar(&exposes, "expose", nil, "a port the sandbox serves, port[-end][/proto]")
	fl.StringVar(&req.Hostname, "hostname", "", "host name (default the sandbox's name)")
	fl.StringVar(&req.Domainname, "domainname", "", "domain name")
	fl.StringArrayVar(&req.DNS, "dns", nil, "nameserver address")
	fl.StringArrayVar(&req.DNSSearch, "dns-search", nil, "DNS search domain")
	fl.StringArrayVar(&req.DNSOptions, "dns-option", nil, "resolv.conf option")
	fl.StringArrayVar(&req.ExtraHosts, "add-host", nil, "hosts file entry, name:addr")
	fl.StringArrayVar(&req.Aliases, "network-alias", nil, "extra name on the network")
	fl.StringVar(&req.Netns, "netns", "", "use this network namespace (a path the caller owns, as a container runtime's) instead of making one")
	fl.StringVar(&req.IfName, "ifname", "", "interface name in the sandbox on --net (default the next ethN)")
	return cmd
}

// sandboxRow is a line of sandbox ls.
type sandboxRow struct {
	Name, Mode, Networks, Ports string
}

var sandboxHeader = map[string]string{"Name": "SANDBOX", "Mode": "MODE", "Networks": "NETWORKS", "Ports": "PORTS"}

func portsText(ps map[string][]api.PortMap) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(ps)) {
		for _, m := range ps[k] {
			out = append(out, fmt.Sprintf("%s:%s->%s", m.HostIP, m.HostPort, k))
		}
	}
	return strings.Join(out, ", ")
}

func sandboxLs(g *globals) *cobra.Command {
	var (
		format string
		quiet  bool
	)
	cmd := &cobra.Command{
		Use:     "ls [OPTIONS]",
		Aliases: []string{"list"},
		Short:   "List sandboxes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format == "" {
				format = "table {{.Name}}\t{{.Mode}}\t{{.Networks}}\t{{.Ports}}"
			}
			if quiet {
				format = "{{.Name}}"
			}
			tmpl, table, err := parseFormat(format)
			if err != nil {
				return err
			}
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				sbs, err := cl.SandboxList(ctx)
				if err != nil {
					return err
				}
				rows := make([]sandboxRow, len(sbs))
				for i, s := range sbs {
					mode := s.Mode
					if s.Share != "" {
						mode += ":" + s.Share
					}
					rows[i] = sandboxRow{Name: s.Name, Mode: mode, Networks: strings.Join(slices.Sorted(maps.Keys(s.NetworkSettings.Networks)), ","), Ports: portsText(s.NetworkSettings.Ports)}
				}
				return printFormatted(cmd.OutOrStdout(), tmpl, table, sandboxHeader, rows)
			})
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "Go template, \"table TEMPLATE\" or \"json\"")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "only names")
	return cmd
}

func sandboxInspect(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:               "inspect [OPTIONS] SANDBOX...",
		Short:             "Show sandboxes with docker container inspect's NetworkSettings",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeNames(g, true),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				return inspectEach(cmd, format, args, func(n string) (api.SandboxInspect, error) { return cl.SandboxInspect(ctx, n) })
			})
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "", "Go template ({{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}})")
	return cmd
}

func sandboxRm(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:               "rm [OPTIONS] SANDBOX...",
		Aliases:           []string{"remove"},
		Short:             "Remove sandboxes (their endpoints are disconnected and deleted)",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeNames(g, true),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				var errs []error
				for _, n := range args {
					if err := cl.SandboxRemove(ctx, n, force); err != nil {
						errs = append(errs, err)
						continue
					}
					fmt.Fprintln(cmd.OutOrStdout(), n)
				}
				return errors.Join(errs...)
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "also remove the sandboxes sharing its namespace (container:NAME)")
	return cmd
}

func execCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "exec SANDBOX -- COMMAND [ARG...]",
		Short:             "Run a command inside a sandbox's network namespace",
		Args:              cobra.MinimumNArgs(2),
		ValidArgsFunction: completeNames(g, true),
		RunE: func(cmd *cobra.Command, args []string) error {
			var key string
			err := withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
				in, err := cl.SandboxInspect(ctx, args[0])
				key = in.NetworkSettings.SandboxKey
				return err
			})
			if err != nil {
				return err
			}
			if key == "" {
				return fmt.Errorf("sandbox %s has no namespace path", args[0])
			}
			return execIn(key, args[1:])
		},
	}
}
