<?php
// Publish tidings notifications from PHP, the way a Laravel app does with
// DB::transaction(fn () => DB::table('tidings.notifications')->insert([...])):
// the notification commits with the app's own work, or not at all.
// Plain PDO here, so it runs without a framework; connection settings come
// from the libpq variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD).
// Usage: php publish.php RECIPIENT

$recipient = $argv[1] ?? 'alice';
$db = new PDO('pgsql:', null, null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);

/** Laravel's DB::transaction in miniature: commit, or roll back and rethrow. */
function transaction(PDO $db, callable $work)
{
    $db->beginTransaction();
    try {
        $result = $work($db);
        $db->commit();
        return $result;
    } catch (Throwable $error) {
        $db->rollBack();
        throw $error;
    }
}

$row = transaction($db, function (PDO $db) use ($recipient) {
    $insert = $db->prepare(
        'INSERT INTO tidings.notifications (recipient, kind, payload) VALUES (?, ?, ?) RETURNING id, seq'
    );
    $insert->execute([$recipient, 'comment.created', json_encode(['title' => 'New comment', 'text' => 'Hi'])]);
    return $insert->fetch(PDO::FETCH_ASSOC);
});
echo "committed id={$row['id']} seq={$row['seq']}\n";

try {
    transaction($db, function (PDO $db) use ($recipient) {
        $db->prepare("INSERT INTO tidings.notifications (recipient, kind) VALUES (?, 'never.sent')")
            ->execute([$recipient]);
        throw new RuntimeException("the app's work failed");
    });
} catch (RuntimeException $error) {
    echo "rolled back: nothing delivered\n";
}
