"""Contact sheets: ``wam-policy perturb-sheet`` (:mod:`.perturb`) and ``contact-sheet`` (:mod:`.contact`)."""
