// Command switchback is Caddy with the switchback modules compiled in.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// switchback's modules.
	_ "github.com/leanvibe/switchback/caddymodule"
)

func main() {
	caddycmd.Main()
}
