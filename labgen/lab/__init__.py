"""The lab's services (fake EOP, DNS, sinks, built-in gateway, traffic), the ledger they
write and the PKI they use: the same code in every engine."""
