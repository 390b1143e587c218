"""The Azure-shaped REST API's handlers, one module per resource group; each module's ``ROUTES`` lists its
(method, ARM path template, handler)."""
