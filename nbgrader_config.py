"""nbgrader configuration for the course run from this folder: solutions/ is the source, exercises/ the release."""

from pathlib import Path

import nbgrader

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

# Feedback reports name each graded part by its heading where nbgrader's template says "Test cell"
# (feedback_templates/course_feedback). Set for GenerateFeedback's exporter only: the formgrader's own HTML exporter
# keeps its template. MathJax still loads from nbgrader's CDN here, as `nbgrader release_feedback` sends the HTML file
# alone; `make grade` switches to course_feedback_offline, which loads a local copy (moe_course/grading.py).
c.GenerateFeedback.HTMLExporter.extra_template_basedirs = [
    str(Path(__file__).parent / "feedback_templates"),
    str(Path(nbgrader.__file__).parent / "server_extensions" / "formgrader" / "templates"),
]
c.GenerateFeedback.HTMLExporter.template_name = "course_feedback"
c.GenerateFeedback.HTMLExporter.template_file = "course_feedback.html.j2"
