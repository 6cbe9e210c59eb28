"""nbgrader configuration for the course run from this folder: solutions/ is the source, exercises/ the release."""

from pathlib import Path

import nbgrader
from nbgrader.converters import Autograde
from nbgrader.preprocessors import Execute

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"

# Grading never hangs: a cell that runs longer than this is interrupted and its part scores 0.
c.Execute.timeout = 60
# A learner who deletes a test cell gets it back from the source notebook.
c.OverwriteCells.add_missing_cells = True
# Output on stderr must not zero a correct answer (nbgrader fails any test cell with stderr output). The course's
# grading (moe_course/grading.py) runs notebooks in moe_course/grading_kernel.py, which sends stderr as stdout; in
# the plain kernel (`nbgrader autograde` on its own) this at least keeps warnings from costing marks.
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

# A kernel that dies, or a cell that ignores the interrupt at the time limit, costs the parts not yet run instead of
# the whole notebook; the processes a notebook started do not outlive it (moe_course/grading_execute.py).
c.Autograde.autograde_preprocessors = [
    "moe_course.grading_execute.GradingExecute" if p is Execute else p
    for p in Autograde.class_traits()["autograde_preprocessors"].default()
]
