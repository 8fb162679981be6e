// Package oxianhv is a Caddy module that turns Caddy into a multi-process
// application server.
package oxianhv
