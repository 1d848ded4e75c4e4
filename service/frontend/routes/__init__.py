"""Thin routers: parse the HTTP request, call the runtime/batcher glue, shape the answer."""
