"""nbgrader configuration for the course run from this folder: solutions/ is the source, exercises/ the release."""

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"

# Grading never hangs: a cell that runs longer than this is interrupted and its part scores 0.
c.Execute.timeout = 60
# A learner who deletes a test cell gets it back from the source notebook.
c.OverwriteCells.add_missing_cells = True
# A warning printed to stderr must not zero a correct answer (nbgrader fails any test cell with stderr output).
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"Warning"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
