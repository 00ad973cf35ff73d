"""Values every stage shares and pure queries over them: the loaded playbook and inventory, plans, results, events, host patterns and vars. No I/O."""
