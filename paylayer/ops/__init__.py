"""The operator's side of the kit: what knows the services by name (the registry, the process
launcher, the migration runner, the test stack and payload factories). Services never import it;
`paylayer` outside this package imports no service.
"""
