"""From the ledger to the verdict: collect every service's events, classify each message,
compare two runs, and print them for people."""
