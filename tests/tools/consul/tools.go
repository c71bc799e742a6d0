//go:build tools

// Package consul pins the Consul server that the test suite runs. Newer Consul
// releases need modules that the build machines cannot fetch, so v1.14.11 it is.
// Build it with: go build -o BIN github.com/hashicorp/consul
package consul

import _ "github.com/hashicorp/consul"
