"""JSON Schemas of the message contract (request, result, error), versioned by file name."""
