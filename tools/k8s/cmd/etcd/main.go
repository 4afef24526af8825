// Command etcd is upstream etcd's server entry point, built at the version that
// k8s.io/kubernetes pins, so the tests' API server talks to the etcd it was released with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
