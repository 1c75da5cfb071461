"""Sources: the device message contract, the contract's provisioned users, the user_metadata table operators maintain, and the device traffic simulator."""
