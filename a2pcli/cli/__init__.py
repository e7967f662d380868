"""The command-line layer: parse, validate, call one library function, display. Only this
package imports typer and rich."""
