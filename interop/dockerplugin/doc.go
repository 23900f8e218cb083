// Package dockerplugin tests cnm's Docker plugin protocol against code nobody here wrote:
// moby's own client (libnetwork/drivers/remote, libnetwork/ipams/remote and pkg/plugins of
// github.com/docker/docker v28) driving cnm's server, and cnm's drivers/remote driving a
// plugin built on moby's published JSON types. The tests are privileged (they make bridges,
// veths and namespaces); run them isolated:
//
//	cd interop && CNM_PRIVILEGED_TESTS=1 ../../shared/tools/nsrun -- go test -race -count=1 ./dockerplugin/
package dockerplugin
