"""The types every layer shares: validated specs, the planned trial, results, input errors."""
