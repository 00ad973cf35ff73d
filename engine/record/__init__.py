"""What the controller remembers between runs: the run history, saved plans, deployed artifact records, and rollbacks planned from them."""
