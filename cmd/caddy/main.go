// Command caddy is Caddy with the standard modules and the oxian_hv worker
// pool module compiled in.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// the standard Caddy modules and the oxian_hv module
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/oxian-hv/oxian-hv"
)

func main() {
	caddycmd.Main()
}
